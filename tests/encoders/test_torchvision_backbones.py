"""The built-in torchvision backbones: features [B, D], preprocessing, seeded random
weights, ImageNet weights from torch's hub cache (offline: a clear error) and weight files."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from imgxfer.components.encoders import torchvision_backbones as tvb
from imgxfer.components.encoders.torchvision_backbones import BACKBONES, TorchvisionEncoder, factory
from imgxfer.core.errors import UserError
from imgxfer.nn.preprocess import IMAGENET_MEAN, IMAGENET_STD
from imgxfer.plugin.registry import Registry

B = 2
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "mobilenet_v3_small": 1024,
               "mobilenet_v3_large": 1280, "efficientnet_b0": 1280, "convnext_tiny": 768}


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The backbones registered the way imgxfer.components.builtin registers them."""
    reg = Registry()
    for name in BACKBONES:
        reg.add("encoders", name, factory(name), "imgxfer", BACKBONES[name].description)
    return reg


def features(encoder: Any, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(encoder.preprocess(images))


def test_table_holds_the_required_backbones() -> None:
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0"} <= set(BACKBONES)
    assert set(BACKBONES) == set(FEATURE_DIM)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_gives_feature_vectors_at_tiny_input(registry: Registry, name: str) -> None:
    encoder = registry.build("encoders", name, {"input_size": 32, "seed": 1})
    assert isinstance(encoder, torch.nn.Module) and not encoder.training
    assert encoder.feature_dim == FEATURE_DIM[name]
    assert (encoder.input_size, encoder.in_channels, encoder.weights_source) == ((32, 32), 3, "random")
    out = features(encoder, torch.rand(B, 1, 28, 28))  # grey, another size
    assert out.shape == (B, FEATURE_DIM[name])
    assert torch.isfinite(out).all()
    # The classifier is gone: no linear layer produces 1000 ImageNet logits any more.
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 1000 for m in encoder.modules())


def test_registry_sees_typed_options(registry: Registry) -> None:
    component = registry.get("encoders", "resnet18")
    assert component.options() == ["pretrained", "input_size", "seed"]
    assert component.description == BACKBONES["resnet18"].description
    with pytest.raises(UserError, match="input_size must be int"):
        registry.build("encoders", "resnet18", {"input_size": "big"})
    with pytest.raises(UserError, match="has no option 'in_chans'"):
        registry.build("encoders", "resnet18", {"in_chans": 1})


def test_preprocess_repeats_grey_and_normalises_with_imagenet_statistics() -> None:
    encoder = TorchvisionEncoder("resnet18", input_size=40)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = encoder.preprocess(torch.full((B, 1, 28, 28), 0.25))
    assert x.shape == (B, 3, 40, 40)
    assert torch.allclose(x, ((0.25 - mean) / std).expand_as(x), atol=1e-5)
    rgb = torch.rand(B, 3, 50, 30)
    rgba = torch.cat([rgb, torch.ones(B, 1, 50, 30)], 1)
    assert torch.equal(encoder.preprocess(rgba), encoder.preprocess(rgb))


@pytest.mark.parametrize("options, message", [
    ({"input_size": 16}, "input_size must be an integer >= 32, got 16"),
    ({"input_size": True}, "input_size must be an integer"),
    ({"pretrained": 3}, "pretrained must be 'none', 'imagenet' or a path"),
    ({"pretrained": ""}, "pretrained must be 'none', 'imagenet' or a path"),
])
def test_invalid_options_are_user_errors(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TorchvisionEncoder("resnet18", **options)


def test_seed_fixes_random_weights_without_touching_global_rng() -> None:
    x = torch.rand(B, 3, 32, 32)
    state = torch.random.get_rng_state()
    a, b, c = (TorchvisionEncoder("resnet18", input_size=32, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(features(a, x), features(b, x))
    assert not torch.allclose(features(a, x), features(c, x))


def test_imagenet_offline_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(tvb, "reachable", lambda url: True)  # online, the download fails
    calls: list[tuple[str, dict]] = []

    def unreachable(url: str, **kwargs: Any) -> None:
        calls.append((url, kwargs))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unreachable)
    with pytest.raises(UserError) as info:
        TorchvisionEncoder("resnet18", pretrained="imagenet")
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert calls == [(url, {"progress": False, "check_hash": True, "weights_only": True})]
    message = str(info.value)
    assert message.startswith("could not download ImageNet weights for resnet18 "
                              "(ResNet18_Weights.IMAGENET1K_V1)")
    assert f"named resnet18-f37072fd.pth, into {tmp_path / 'hub' / 'checkpoints'}" in message
    assert "URLError" in message and "pretrained=/path/to/weights.safetensors" in message
    assert "\n" not in message


def test_imagenet_offline_fails_at_once_without_the_hub(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """No minute of torch.hub retries: a short connection test says offline first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    probed: list[str] = []

    def offline(url: str) -> bool:
        probed.append(url)
        return False

    def download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.hub was asked although the host cannot be reached")

    monkeypatch.setattr(tvb, "reachable", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    with pytest.raises(UserError) as info:
        TorchvisionEncoder("resnet18", pretrained="imagenet")
    assert probed == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    message = str(info.value)
    assert message.startswith("could not download ImageNet weights for resnet18 "
                              "(ResNet18_Weights.IMAGENET1K_V1) from https://download.pytorch.org/")
    assert "(no connection to download.pytorch.org); on a machine with internet" in message


def test_reachable_is_a_short_connection_test(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from imgxfer.nn import weights

    calls: list[tuple] = []

    class Connection:
        def close(self) -> None:
            pass

    def connect(address: tuple, timeout: float) -> Connection:
        calls.append((address, timeout))
        if address[0] == "offline.example":
            raise socket.gaierror("Name or service not known")
        return Connection()

    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", connect)
    assert weights.reachable("https://online.example/x.pth")
    assert not weights.reachable("https://offline.example/x.pth")
    assert calls == [(("online.example", 443), 2.0), (("offline.example", 443), 2.0)]
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")  # the proxy downloads
    assert weights.reachable("https://offline.example/x.pth") and len(calls) == 2


def test_imagenet_weights_are_read_from_the_hub_cache(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """The advice of the offline error works: a file put there is used, no download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(tvb, "reachable", lambda url: False)  # offline: the cache is enough
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(5)
    stand_in = torchvision.models.resnet18().eval()  # a full model, 1000-class head included
    torch.save(stand_in.state_dict(), checkpoints / "resnet18-f37072fd.pth")

    encoder = TorchvisionEncoder("resnet18", pretrained="imagenet", input_size=32)
    assert encoder.weights_source == "imagenet (ResNet18_Weights.IMAGENET1K_V1)"
    x = torch.rand(B, 3, 32, 32)
    stand_in.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(encoder(x), stand_in(x), atol=1e-6)

    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"truncated download")
    with pytest.raises(UserError, match=r"cached ImageNet weights .*resnet18-f37072fd.pth.* "
                                        r"could not be read .*delete the file"):
        TorchvisionEncoder("resnet18", pretrained="imagenet")


def test_weight_files_round_trip(tmp_path: Path) -> None:
    x = torch.rand(B, 1, 28, 28)
    original = TorchvisionEncoder("mobilenet_v3_small", input_size=32, seed=1)
    # Random MobileNet features are ~0; give the weights some spread to compare.
    with torch.no_grad():
        for p in original.parameters():
            p.normal_(0, 0.2)
    path = tmp_path / "encoder.safetensors"
    save_file(original.state_dict(), str(path))  # the encoder's own keys ("model.")
    loaded = TorchvisionEncoder("mobilenet_v3_small", pretrained=str(path), input_size=32)
    assert loaded.weights_source == str(path)
    assert features(original, x).abs().max() > 1e-3
    assert torch.equal(features(loaded, x), features(original, x))

    # A torchvision checkpoint fine-tuned for 10 classes, wrapped by a training script.
    torch.manual_seed(2)
    classifier = torchvision.models.resnet18(num_classes=10).eval()
    pth = tmp_path / "finetuned.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()},
                "epoch": 3}, pth)
    encoder = TorchvisionEncoder("resnet18", pretrained=str(pth), input_size=32)
    classifier.fc = torch.nn.Identity()
    y = torch.rand(B, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(y), classifier(y), atol=1e-6)


def test_wrong_architecture_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    with pytest.raises(UserError) as info:
        TorchvisionEncoder("resnet50", pretrained=str(path))
    message = str(info.value)
    assert message.startswith(f"weights file '{path}' does not fit torchvision model 'resnet50'")
    assert "size mismatches" in message and "another architecture" in message

    # Same family, fewer blocks: missing keys, named.
    with pytest.raises(UserError, match=r"does not fit torchvision model 'resnet34': \d+ missing keys "
                                        r"\(e.g. layer1.2.conv1.weight"):
        TorchvisionEncoder("resnet34", pretrained=str(path))


def test_unreadable_weight_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="for resnet18 does not exist"):
        TorchvisionEncoder("resnet18", pretrained=str(tmp_path / "missing.pth"))
    npz = tmp_path / "weights.npz"
    npz.write_bytes(b"")
    with pytest.raises(UserError, match="must end in .safetensors, .pth, .pt, .bin"):
        TorchvisionEncoder("resnet18", pretrained=str(npz))
    pickled = tmp_path / "object.pt"  # weights_only=True refuses arbitrary objects
    torch.save({"conv1.weight": torch.zeros(1), "callback": Path("/x")}, pickled)
    with pytest.raises(UserError) as info:
        TorchvisionEncoder("resnet18", pretrained=str(pickled))
    # One sentence, not torch's six lines ending in advice to load it unsafely.
    message = str(info.value)
    assert message.startswith(f"weights file {str(pickled)!r} for resnet18 is not a "
                              "safetensors file or a weights-only torch checkpoint (it holds "
                              "pickled Python objects such as pathlib.")
    assert "\n" not in message and "weights_only=False" not in message
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="could not be read as weights"):
        TorchvisionEncoder("resnet18", pretrained=str(corrupt))
    garbage = tmp_path / "garbage.pth"  # damaged, not unsafe: said so
    garbage.write_bytes(b"garbage bytes, not a pickle")
    with pytest.raises(UserError, match="could not be read as weights .it is not a torch "
                                        "checkpoint, or it is damaged"):
        TorchvisionEncoder("resnet18", pretrained=str(garbage))
