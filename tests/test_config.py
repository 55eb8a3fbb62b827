"""Config files, CLI overrides and the saved, resolved config."""

from __future__ import annotations

import sys

import pytest

from imgxfer.core import config as cfg
from imgxfer.core.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_tables_and_strings(tmp_path):
    c = cfg.load(write(tmp_path, 'shots = 5\nencoder = "smallcnn"\n[source]\nname = "syndigits"\nn_per_class = 7\n'))
    assert c.shots == 5 and c.source == "syndigits"
    assert c.options["source"] == {"n_per_class": 7} and c.options["encoder"] == {}


def test_unknown_keys_named(tmp_path):
    with pytest.raises(UserError, match="unknown keys shotz, speed; valid keys: "):
        cfg.load(write(tmp_path, "shotz = 5\nspeed = 1\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(UserError, match="shots must be int, got '5'"):
        cfg.load(write(tmp_path, 'shots = "5"\n'))


def test_malformed_and_missing(tmp_path):
    with pytest.raises(UserError, match="is not valid TOML"):
        cfg.load(write(tmp_path, "shots = = 5\n"))
    with pytest.raises(UserError, match="does not exist"):
        cfg.load(tmp_path / "nope.toml")


def test_cli_overrides_win_and_swap_drops_options(tmp_path):
    c = cfg.load(write(tmp_path, '[encoder]\nname = "smallcnn"\nwidth = 8\n[adapter]\nname = "finetune"\nlr = 0.1\n'))
    c = cfg.apply_overrides(c, {"shots": 3, "encoder": "timm/resnet18", "adapter": "finetune", "seed": None},
                            {"adapter": ["batch_size=16", "adabn=false", "note=hello world"]})
    assert c.shots == 3 and c.encoder == "timm/resnet18"
    assert c.options["encoder"] == {}  # width belonged to smallcnn
    assert c.options["adapter"] == {"lr": 0.1, "batch_size": 16, "adabn": False, "note": "hello world"}


def test_bad_option_syntax():
    with pytest.raises(UserError, match="--encoder-opt expects key=value, got 'width'"):
        cfg.parse_option("width", "--encoder-opt")


def test_resolved_config_round_trips():
    c = cfg.apply_overrides(cfg.RunConfig(), {"shots": 4}, {"generator": ["width=8"]})
    again = cfg.from_mapping(tomllib.loads(c.to_toml()))
    assert again == c


@pytest.mark.parametrize("overrides, message", [
    ({"shots": 0, "synthesis": "text"},
     "--shots 0 leaves no labelled target images for the generator 'gan'"),
    ({"shots": -1}, "shots must be zero or more"),
    ({"device": "tpu"}, "device must be auto, cpu"),
    ({"adapter_steps": -5}, "adapter_steps must be zero or more"),
])
def test_validate(overrides, message):
    c = cfg.apply_overrides(cfg.RunConfig(), overrides, {})
    with pytest.raises(UserError, match=message):
        c.validate()


def test_zero_shots_allowed_without_generator():
    cfg.apply_overrides(cfg.RunConfig(), {"shots": 0, "generator": "none"}, {}).validate()
