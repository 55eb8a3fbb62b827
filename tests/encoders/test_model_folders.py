"""check_model_folder: the one check every plugin that reads a saved Hugging Face folder
runs first, so that loading it can never run the folder's code or unpickle its weights."""

from pathlib import Path

import pytest

from imgxfer.core.errors import UserError
from imgxfer.nn.weights import check_model_folder


def folder_with(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, message", [
    ({"config.json": "{}", "modeling.py": "x = 1"}, "holds custom code (modeling.py)"),
    ({"config.json": '{"auto_map": {"AutoModel": "m.M"}}'}, "holds custom code (config.json)"),
    ({"model_index.json": '{"custom_pipeline": "p"}'}, "holds custom code (model_index.json)"),
    ({"config.json": "{}", "pytorch_model.bin": "x"}, "pytorch_model.bin in"),
    ({"unet/weights.ckpt": "x", "model.safetensors": "x"}, "unet/weights.ckpt in"),
])
def test_folders_that_could_run_code_are_one_sentence(tmp_path: Path, files: dict,
                                                      message: str) -> None:
    with pytest.raises(UserError) as error:
        check_model_folder(folder_with(tmp_path, files), "hf:m")
    assert str(error.value).startswith("hf:m: ") and message in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_plain_folders_pass(tmp_path: Path) -> None:
    """Safetensors weights (with a pickle beside them, which is never read), configs
    without code keys, and configs that are not JSON objects (the loader words those)."""
    check_model_folder(folder_with(tmp_path, {
        "config.json": '{"model_type": "blip"}', "model.safetensors": "x",
        "pytorch_model.bin": "x", "vocab.json": '["auto_map"]', "broken.json": "{"}), "hf:m")
