"""`imgxfer generate`: images from the generator a run saved, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CLASSES, tiny_bars
from PIL import Image

from imgxfer.cli.app import cli
from imgxfer.cli.generate import resolve_label
from imgxfer.components.generators.gan import ConditionalGAN
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress
from imgxfer.core.runfolder import atomic_save_tensors, atomic_write_json
from imgxfer.data.dataset import GeneratorData

OPTIONS = {"width": 4, "z_dim": 8, "embed_dim": 8, "image_size": 8, "batch_size": 16}
PROMPT = "a tiny shape {}, domain tiny-target"


def _trained() -> ConditionalGAN:
    data = tiny_bars("tiny-target", n_per_class=8)
    captions = [PROMPT.format(CLASSES[int(y)]) for y in data.labels]
    gan = ConditionalGAN(**OPTIONS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only cost on a shared CPU
    try:
        gan.fit(GeneratorData(data.images, data.labels, captions, ["tiny-target"] * len(data),
                              list(CLASSES), "tiny-target"),
                budget=Budget(10), progress=NullProgress())
    finally:
        torch.set_num_threads(threads)
    return gan


@pytest.fixture(scope="module")
def gan() -> ConditionalGAN:
    return _trained()


def _save_like_the_pipeline(folder, gan: ConditionalGAN, options=None, metrics=True,
                            extra: dict | None = None):
    """What `imgxfer run` leaves: generator.safetensors (component, options) and
    metrics.json with the class names."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(folder / "generator.safetensors", gan.state_dict(),
                        {"component": "gan", "options": json.dumps(options or OPTIONS),
                         **(extra or {})})
    if metrics:
        atomic_write_json(folder / "metrics.json", {"data": {"classes": list(CLASSES)}})
    return folder


@pytest.fixture
def run_folder(tmp_path, gan):
    return _save_like_the_pipeline(tmp_path / "run", gan)


def generate(*args):
    return CliRunner().invoke(cli, ["generate", *map(str, args)])


def _png(path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def test_writes_n_pngs_and_a_grid(host, run_folder, tmp_path) -> None:
    out = tmp_path / "out"
    result = generate("--from", run_folder, "--prompt", "a tiny shape vertical", "--n", 5,
                      "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "000.png", "001.png", "002.png", "003.png", "004.png", "grid.png"]
    first = _png(out / "000.png")
    assert first.size == (8, 8) and first.mode == "L"
    grid = _png(out / "grid.png")
    # 3 columns, 2 rows, 2-pixel padding; each 8-px image shown 12 times larger (96 px,
    # GRID_MIN_SIDE), nearest neighbour: every 12x12 block is one pixel of the image.
    assert grid.size == (3 * 98 + 2, 2 * 98 + 2)
    cell = np.asarray(grid.convert("L"))[2:98, 2:98]
    assert (cell == np.kron(cell[::12, ::12], np.ones((12, 12), np.uint8))).all()
    assert (cell[::12, ::12] == np.asarray(first)).all()
    assert "5 images of class 'vertical'" in result.output


def test_images_are_those_the_generator_draws(host, run_folder, gan, tmp_path) -> None:
    out = tmp_path / "out"
    prompt = PROMPT.format("dot")
    assert generate("--from", run_folder, "--prompt", prompt, "--n", 3, "--out", out,
                    "--seed", 4).exit_code == 0
    expected = gan.sample([prompt], [2], n=3, seed=4)
    for i in range(3):
        pixels = torch.from_numpy(np.array(_png(out / f"00{i}.png"))).float() / 255
        assert torch.allclose(pixels, expected[i, 0], atol=0.5 / 255 + 1e-6)


def test_label_by_name_or_index_and_seed(host, run_folder, tmp_path) -> None:
    def draw(*extra):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        result = generate("--from", run_folder, "--prompt", "a tiny shape", "--n", 4,
                          "--out", out, *extra)
        assert result.exit_code == 0, result.output
        return (out / "grid.png").read_bytes()

    by_name = draw("--label", "Dot")
    assert draw("--label", "2") == by_name
    assert draw("--label", "2", "--seed", 0) == by_name  # seed 0 is the default
    assert draw("--label", "2", "--seed", 1) != by_name
    assert draw("--label", "0") != by_name


def test_a_label_other_than_the_prompts_class_is_warned_about(host, run_folder, tmp_path):
    result = generate("--from", run_folder, "--prompt", "a dot", "--label", "horizontal",
                      "--n", 1, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "warning: the prompt names 'dot', but --label draws 'horizontal'." in result.output
    result = generate("--from", run_folder, "--prompt", "a dot", "--label", "dot",
                      "--n", 1, "--out", tmp_path / "o2")
    assert result.exit_code == 0 and "warning" not in result.output


def test_from_the_file_itself(host, run_folder, tmp_path) -> None:
    result = generate("--from", run_folder / "generator.safetensors", "--prompt",
                      "one horizontal bar", "--n", 1, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "class 'horizontal'" in result.output


def test_class_names_from_the_file_metadata(host, gan, tmp_path) -> None:
    folder = _save_like_the_pipeline(tmp_path / "bare", gan, metrics=False,
                                     extra={"classes": json.dumps(["a", "b", "c"])})
    result = generate("--from", folder, "--prompt", "class c please", "--n", 1, "--out",
                      tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "class 'c'" in result.output


def test_without_class_names_only_an_index_works(host, gan, tmp_path) -> None:
    folder = _save_like_the_pipeline(tmp_path / "bare", gan, metrics=False)
    result = generate("--from", folder, "--prompt", "a dot", "--n", 1, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "class names of this generator are unknown" in result.output
    assert "indices 0 to 2" in result.output
    result = generate("--from", folder, "--prompt", "a dot", "--label", "1", "--n", 1,
                      "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "class 1" in result.output


def test_defaults_changed_since_the_run_still_load(host, gan, tmp_path) -> None:
    # A run that left the architecture at its defaults records options {}; the file's
    # own meta entries rebuild it even if the defaults are no longer those.
    folder = _save_like_the_pipeline(tmp_path / "run", gan, options={})
    result = generate("--from", folder, "--prompt", "a dot", "--n", 2, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("prompt, label, words", [
    ("a tiny shape", None, "names none of the classes"),
    ("a tiny shape", None, "0=horizontal, 1=vertical, 2=dot"),
    ("a horizontal or a vertical bar", None, "names several classes (horizontal, vertical)"),
    ("a dot", "diagonal", "--label 'diagonal' is not a class"),
    ("a dot", "3", "--label 3 is not a class index"),
    ("a dot", "-1", "--label -1 is not a class index"),
])
def test_unknown_or_missing_class_is_a_user_error(host, run_folder, tmp_path, prompt, label,
                                                  words) -> None:
    args = ["--from", run_folder, "--prompt", prompt, "--n", 2, "--out", tmp_path / "out"]
    result = generate(*args, *(["--label", label] if label else []))
    assert result.exit_code == 2 and words in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_positive(host, run_folder, tmp_path, n) -> None:
    result = generate("--from", run_folder, "--prompt", "a dot", "--n", n, "--out",
                      tmp_path / "out")
    assert result.exit_code == 2 and "--n must be" in result.output and f"got {n}" in result.output


def test_non_empty_out_needs_force(host, run_folder, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "7.png").write_bytes(b"a user's picture")  # not a name generate writes
    (out / "099.png").write_bytes(b"old")
    result = generate("--from", run_folder, "--prompt", "a dot", "--n", 2, "--out", out)
    assert result.exit_code == 2 and "is not empty" in result.output and "--force" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["099.png", "7.png", "notes.txt"]
    result = generate("--from", run_folder, "--prompt", "a dot", "--n", 2, "--out", out,
                      "--force")
    assert result.exit_code == 0, result.output
    # Earlier images go (no stale 099.png); the user's other files stay.
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "7.png", "grid.png",
                                                      "notes.txt"]


def test_out_that_is_a_file_is_a_user_error(host, run_folder, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    result = generate("--from", run_folder, "--prompt", "a dot", "--out", tmp_path / "file")
    assert result.exit_code == 2 and "is a file" in result.output


def test_generator_of_another_configuration_is_a_user_error(host, gan, tmp_path) -> None:
    folder = _save_like_the_pipeline(tmp_path / "run", gan, options={**OPTIONS, "width": 8})
    result = generate("--from", folder, "--prompt", "a dot", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "width=4 (not 8)" in result.output, result.output


def test_class_count_that_differs_from_the_run_is_a_user_error(host, gan, tmp_path) -> None:
    folder = _save_like_the_pipeline(tmp_path / "run", gan)
    atomic_write_json(folder / "metrics.json", {"data": {"classes": ["a", "b"]}})
    result = generate("--from", folder, "--prompt", "a", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "3 classes" in result.output and "lists 2" in result.output


def test_bad_sources_are_user_errors(host, gan, tmp_path) -> None:
    def check(source, words):
        result = generate("--from", source, "--prompt", "a dot", "--out", tmp_path / "out")
        assert result.exit_code == 2 and words in result.output, result.output
        assert "Traceback" not in result.output

    check(tmp_path / "missing", "does not exist")
    (tmp_path / "empty-run").mkdir()
    check(tmp_path / "empty-run", "has no generator.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00not json at all")
    check(tmp_path / "broken.safetensors", "cannot be read")
    folder = _save_like_the_pipeline(tmp_path / "run", gan)
    raw = (folder / "generator.safetensors").read_bytes()
    (tmp_path / "half.safetensors").write_bytes(raw[:len(raw) // 2])
    check(tmp_path / "half.safetensors", "truncated")
    atomic_save_tensors(tmp_path / "classifier.safetensors", {"w": torch.zeros(2)})
    check(tmp_path / "classifier.safetensors", "not saved by an imgxfer generator")
    atomic_save_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(2)},
                        {"component": "no-such-generator"})
    check(tmp_path / "x.safetensors", "unknown generator 'no-such-generator'")


def test_training_checkpoint_is_refused_with_advice(host, tmp_path) -> None:
    data = tiny_bars("t", n_per_class=4)
    gan = ConditionalGAN(**OPTIONS)
    gan.fit(GeneratorData(data.images, data.labels, ["x"] * len(data), ["t"] * len(data),
                          list(CLASSES), "t"), budget=Budget(2), progress=NullProgress(),
            checkpoint=tmp_path / "generator-train.safetensors")
    result = generate("--from", tmp_path / "generator-train.safetensors", "--prompt", "a dot",
                      "--out", tmp_path / "out")
    assert result.exit_code == 2 and "training checkpoint" in result.output


def test_generate_is_listed_in_help(host) -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "generate" in result.output
    result = CliRunner().invoke(cli, ["generate", "--help"])
    assert result.exit_code == 0 and "--label" in result.output and "--force" in result.output


# -- the class a prompt names ------------------------------------------------------------

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("prompt, expected", [
    ("a handwritten digit SEVEN, domain mnist", 7),
    ("seven", 7),
    ("an ankle boot", 9),
    ("a t-shirt/top on a hanger", 0),  # "shirt" lies inside the longer match
    ("a shirt", 6),
    ("a handwritten digit 3", 3),  # digits and number words are the same word
    ("the digit Three", 3),
])
def test_prompt_names_the_class(prompt: str, expected: int) -> None:
    from imgxfer.components.datasets.digits import DIGIT_NAMES

    names = DIGIT_NAMES if "digit" in prompt or prompt == "seven" else FASHION
    assert resolve_label(prompt, None, names) == expected


def test_words_must_match_whole() -> None:
    with pytest.raises(UserError, match="names none"):
        resolve_label("sevens and elevens", None, ["seven", "eleven"])
    with pytest.raises(UserError, match="names several classes"):
        resolve_label("a shirt and a coat", None, FASHION)
    assert resolve_label("anything", "coat", FASHION) == 4
    assert resolve_label("anything", 4, FASHION) == 4
    assert resolve_label("a seven", None, ["5", "7"]) == 1  # and the other way round
    assert resolve_label("route 66", None, ["6", "66"]) == 1  # whole numbers only
    assert resolve_label("anything", "seven", ["5", "7"]) == 1
    with pytest.raises(UserError, match="'CAT' matches several classes \\(cat, Cat\\)"):
        resolve_label("anything", "CAT", ["cat", "Cat", "dog"])


@pytest.mark.parametrize("prompt", [
    "a seven drawn with 2 strokes",  # a number that is no class name as written
    "a handwritten digit (probably seven, p=0.93), domain mnist",  # a caption's wording
])
def test_numbers_in_a_prompt_name_a_class_only_when_nothing_else_does(prompt: str) -> None:
    from imgxfer.components.datasets.digits import DIGIT_NAMES

    assert resolve_label(prompt, None, DIGIT_NAMES) == 7


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_a_seed_out_of_range_is_one_sentence(host, run_folder, tmp_path, seed) -> None:
    out = tmp_path / "out"
    result = generate("--from", run_folder, "--prompt", "a dot", "--out", out, "--seed", seed)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--seed must be between 0 and {2 ** 32 - 1}, got {seed}." in result.output
    assert not out.exists()
