"""Tests for the imgxfer-timm plugin, run against the installed package and its entry point
(``pip install ./plugins/imgxfer-timm``), with timm's tiny ``test_*`` models."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file

from imgxfer.core.errors import UserError
from imgxfer.plugin.host import PluginHost
from imgxfer.plugin.registry import Registry

B = 2


@pytest.fixture(scope="module")
def registry() -> Registry:
    # env={}: IMGXFER_LOAD_PLUGINS unset, so every installed entry point loads.
    return PluginHost(env={}).load_all().registry


def build(registry: Registry, name: str, **options: Any) -> Any:
    return registry.build("encoders", f"timm/{name}", options)


def features(encoder: Any, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(encoder.preprocess(images))


def test_found_through_installed_entry_point() -> None:
    eps = {ep.name: ep for ep in md.entry_points(group="imgxfer")}
    assert "timm" in eps, (
        "no 'timm' entry point in group 'imgxfer': install the plugin with "
        "`pip install ./plugins/imgxfer-timm` before running these tests"
    )
    assert eps["timm"].value == "imgxfer_timm"
    assert eps["timm"].dist is not None and eps["timm"].dist.name == "imgxfer-timm"

    host = PluginHost(env={}).load_all()
    info = host.plugins["timm"]
    assert (info.status, info.source, info.error) == ("ok", "entry point", "")
    assert info.components == {"encoders": ["timm/"]}
    component = host.registry.get("encoders", "timm/test_resnet")
    assert component.description == "Any timm backbone as a feature encoder (timm/<model_name>)"
    assert component.options() == ["pretrained", "input_size", "in_channels", "seed"]

    encoder = host.registry.build("encoders", "timm/test_resnet")
    assert isinstance(encoder, torch.nn.Module)
    assert type(encoder).__module__ == "imgxfer_timm.encoder"


@pytest.mark.parametrize("name, options", [
    ("test_resnet", {}),
    ("test_efficientnet", {"input_size": 64}),
    ("test_vit", {"input_size": 32}),  # fixed-size model: rebuilt for the new size
    ("test_mambaout", {"input_size": 64}),  # pre-logits width != num_features
])
def test_forward_gives_feature_dim_vectors(registry: Registry, name: str, options: dict) -> None:
    encoder = build(registry, name, **options)
    out = features(encoder, torch.rand(B, 1, 28, 28))
    assert out.shape == (B, encoder.feature_dim)
    assert torch.isfinite(out).all()
    assert encoder.in_channels == 3 and encoder.weights_source == "random"
    if "input_size" in options:
        assert encoder.input_size == (options["input_size"],) * 2
    if name == "test_mambaout":
        assert encoder.feature_dim != encoder.model.num_features


def test_attributes_come_from_pretrained_cfg(registry: Registry) -> None:
    encoder = build(registry, "test_resnet")
    cfg = timm.data.resolve_model_data_config(encoder.model)
    assert encoder.input_size == tuple(cfg["input_size"][1:]) == (160, 160)
    assert (encoder.mean, encoder.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    assert encoder.feature_dim == encoder.model.num_features == 96
    assert not encoder.training  # built for feature extraction


def test_preprocess_maps_any_channels_and_size(registry: Registry) -> None:
    encoder = build(registry, "test_efficientnet")  # ImageNet mean/std, bicubic
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)

    grey = torch.full((B, 1, 28, 28), 0.25)
    x = encoder.preprocess(grey)
    assert x.shape == (B, 3, 160, 160)
    # A constant image stays constant through resizing, so each channel is (0.25 - m) / s.
    assert torch.allclose(x, ((0.25 - mean) / std).expand_as(x), atol=1e-5)

    rgb = torch.rand(B, 3, 40, 30)
    rgba = torch.cat([rgb, torch.zeros(B, 1, 40, 30)], dim=1)
    assert torch.equal(encoder.preprocess(rgba), encoder.preprocess(rgb))
    assert encoder.preprocess(rgb).amax() <= ((1 - mean) / std).max() + 1e-5  # clamped bicubic

    with pytest.raises(UserError, match="expects 3-channel images and cannot convert 2-channel"):
        encoder.preprocess(torch.rand(B, 2, 28, 28))


def test_one_channel_model_turns_rgb_into_luma(registry: Registry) -> None:
    encoder = build(registry, "test_resnet", in_channels=1, input_size=28)
    assert encoder.in_channels == 1 and encoder.mean == (0.5,)
    red = torch.zeros(B, 3, 28, 28)
    red[:, 0] = 1.0
    x = encoder.preprocess(red)
    assert x.shape == (B, 1, 28, 28)
    assert torch.allclose(x, torch.full_like(x, (0.299 - 0.5) / 0.5), atol=1e-6)
    assert features(encoder, red).shape == (B, encoder.feature_dim)


def test_unknown_model_name_suggests_close_names(registry: Registry) -> None:
    with pytest.raises(UserError) as info:
        build(registry, "test_resnett")
    message = str(info.value)
    assert message.startswith("unknown timm model 'test_resnett'; did you mean test_resnet")
    assert message.endswith("?") and "\n" not in message  # one sentence

    with pytest.raises(UserError, match="has no pretrained tag 'nope'; known tags: r160_in1k"):
        build(registry, "test_resnet.nope")


@pytest.mark.parametrize("option, value", [("input_size", 0), ("input_size", "big"),
                                           ("in_channels", True), ("pretrained", 1)])
def test_invalid_option_values_are_user_errors(registry: Registry, option: str, value: Any) -> None:
    with pytest.raises(UserError, match=option if option != "pretrained" else "pretrained must be"):
        build(registry, "test_resnet", **{option: value})


def test_seed_fixes_random_weights_without_touching_global_rng(registry: Registry) -> None:
    x = torch.rand(B, 3, 32, 32)
    state = torch.random.get_rng_state()
    a, b, c = (build(registry, "test_resnet", seed=s, input_size=32) for s in (1, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(features(a, x), features(b, x))
    assert not torch.allclose(features(a, x), features(c, x))


def test_safetensors_round_trip(registry: Registry, tmp_path: Path) -> None:
    x = torch.rand(B, 1, 28, 28)
    original = build(registry, "test_resnet", seed=1, input_size=32)
    path = tmp_path / "backbone.safetensors"
    save_file(original.model.state_dict(), str(path))

    loaded = build(registry, "test_resnet", pretrained=str(path), seed=2, input_size=32)
    assert loaded.weights_source == str(path)
    assert torch.equal(features(loaded, x), features(original, x))
    random = build(registry, "test_resnet", seed=2, input_size=32)
    assert not torch.allclose(features(random, x), features(original, x))

    # The encoder's own state dict (keys prefixed "model.") loads as well.
    save_file(original.state_dict(), str(path))
    prefixed = build(registry, "test_resnet", pretrained=str(path), input_size=32)
    assert torch.equal(features(prefixed, x), features(original, x))


def test_pth_checkpoint_with_classifier_head(registry: Registry, tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = timm.create_model("test_resnet", num_classes=10).eval()
    path = tmp_path / "finetuned.pth"
    torch.save({"state_dict": classifier.state_dict(), "epoch": 3}, path)

    encoder = build(registry, "test_resnet", pretrained=str(path))
    x = torch.rand(B, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        assert torch.allclose(encoder(x), expected, atol=1e-6)


def test_rgb_weights_adapt_to_one_channel_model(registry: Registry, tmp_path: Path) -> None:
    rgb = build(registry, "test_resnet", seed=1)
    path = tmp_path / "rgb.safetensors"
    save_file(rgb.model.state_dict(), str(path))
    grey = build(registry, "test_resnet", pretrained=str(path), in_channels=1)
    x = torch.rand(B, 1, 64, 64)
    with torch.no_grad():
        # Summed RGB filters on one channel == RGB filters on that channel repeated.
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_wrong_architecture_is_a_user_error(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "effnet.safetensors"
    save_file(build(registry, "test_efficientnet").model.state_dict(), str(path))
    with pytest.raises(UserError) as info:
        build(registry, "test_resnet", pretrained=str(path))
    message = str(info.value)
    assert f"weights file '{path}' does not fit timm model 'test_resnet'" in message
    assert "missing keys" in message and "unexpected keys" in message

    # Same key names, other shapes: a size mismatch, not a crash inside load_state_dict.
    wide = tmp_path / "wide.safetensors"
    save_file(build(registry, "test_resnet", in_channels=2).model.state_dict(), str(wide))
    with pytest.raises(UserError, match=r"1 size mismatches \(e.g. conv1.0.weight \[16, 2, 3, 3\]"):
        build(registry, "test_resnet", pretrained=str(wide))


def test_unreadable_weight_files_are_user_errors(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'.*missing.safetensors' for timm model 'test_resnet' does not exist"):
        build(registry, "test_resnet", pretrained=str(tmp_path / "missing.safetensors"))

    npz = tmp_path / "weights.npz"
    npz.write_bytes(b"")
    with pytest.raises(UserError, match="must end in .safetensors, .pth, .pt, .bin"):
        build(registry, "test_resnet", pretrained=str(npz))

    # weights_only=True refuses to rebuild arbitrary objects from the pickle.
    pickled = tmp_path / "object.pt"
    torch.save({"conv1.0.weight": torch.zeros(1), "callback": Path("/x")}, pickled)
    with pytest.raises(UserError) as info:
        build(registry, "test_resnet", pretrained=str(pickled))
    message = str(info.value)  # one sentence, not torch's advice to load it unsafely
    assert "is not a safetensors file or a weights-only torch checkpoint" in message
    assert "\n" not in message and "weights_only=False" not in message

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="could not be read as weights"):
        build(registry, "test_resnet", pretrained=str(corrupt))


def test_imagenet_offline_explains_how_to_get_weights(registry: Registry,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from imgxfer_timm import encoder

    monkeypatch.setattr(encoder, "reachable", lambda url: True)  # online, the download fails
    calls: list[dict] = []

    def unreachable_hub(name: str, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", unreachable_hub)
    with pytest.raises(UserError) as info:
        build(registry, "test_resnet", pretrained="imagenet")
    assert calls and calls[0]["pretrained"] is True  # the real download path was taken
    message = str(info.value)
    assert message.startswith("could not download ImageNet weights for timm model 'test_resnet' "
                              "from the Hugging Face hub repo 'timm/test_resnet.r160_in1k'")
    assert "HF_HOME" in message and "pretrained=/path/to/weights.safetensors" in message


def test_imagenet_offline_reads_only_the_caches(registry: Registry,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline (a short connection test), the hub is asked in its offline mode: a cached
    model loads, an uncached one fails at once instead of after a minute of retries."""
    from huggingface_hub import constants

    from imgxfer_timm import encoder

    probed: list[str] = []
    modes: list[bool] = []

    def offline(url: str) -> bool:
        probed.append(url)
        return False

    def uncached(name: str, **kwargs: Any) -> None:
        modes.append(constants.HF_HUB_OFFLINE)
        raise OSError("offline mode is enabled and the file is not in the cache")

    monkeypatch.setattr(encoder, "reachable", offline)
    monkeypatch.setattr(timm, "create_model", uncached)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(UserError) as info:
        build(registry, "test_resnet", pretrained="imagenet")
    assert probed == [constants.ENDPOINT] and modes == [True]
    assert constants.HF_HUB_OFFLINE == before  # put back
    assert "'timm/test_resnet.r160_in1k' (no connection to huggingface.co); " in str(info.value)


def test_cached_weights_load_without_asking_the_network(registry: Registry,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights in the hub cache are read from it in offline mode: no connection test (an
    offline machine would otherwise wait for it) and no request to the hub."""
    import huggingface_hub
    from huggingface_hub import constants

    from imgxfer_timm import encoder

    probed: list[str] = []
    modes: list[bool] = []

    class Loaded(Exception):
        pass

    def from_cache(name: str, **kwargs: Any) -> None:
        modes.append(constants.HF_HUB_OFFLINE)
        raise Loaded

    monkeypatch.setattr(encoder, "reachable", lambda url: probed.append(url) or True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, **kw: "/cache/" + name)
    monkeypatch.setattr(timm, "create_model", from_cache)
    with pytest.raises(Loaded):
        build(registry, "test_resnet", pretrained="imagenet")
    assert probed == [] and modes == [True]


def test_pretrained_none_means_random_weights_as_for_builtin_backbones(registry: Registry) -> None:
    x = torch.rand(B, 3, 32, 32)
    none, random = (build(registry, "test_resnet", seed=3, input_size=32, pretrained=p)
                    for p in ("none", "random"))
    assert none.weights_source == "random"
    assert torch.equal(features(none, x), features(random, x))
