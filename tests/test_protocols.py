"""imgxfer.plugin.protocols: the forms of an encoder's ``input_size`` the core accepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import imgxfer
from imgxfer.core.errors import UserError
from imgxfer.plugin.protocols import check_component, encoder_input_size


class SquareEncoder(nn.Module):
    """A tiny encoder that states its input size as an int (a square), as plugins do."""

    feature_dim, in_channels, weights_source = 4, 1, "random"

    def __init__(self, input_size: object = None, seed: int = 0) -> None:
        super().__init__()
        self.input_size = 16 if input_size is None else input_size  # None: any form passes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        from imgxfer.nn.preprocess import prepare

        return prepare(images, channels=1, size=encoder_input_size(self), mean=[0.5],
                       std=[0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("size, pair", [(16, (16, 16)), ((12, 20), (12, 20)),
                                        ([12, 20], (12, 20)), (torch.Size([8, 8]), (8, 8))])
def test_an_int_is_a_square_and_a_pair_is_height_and_width(size, pair) -> None:
    assert encoder_input_size(SquareEncoder(size)) == pair


@pytest.mark.parametrize("size", ["32x32", (32,), (0, 8), True, 32.0, (8, 8, 8), -4])
def test_another_input_size_is_refused_when_built_naming_the_forms(size) -> None:
    with pytest.raises(UserError) as caught:
        check_component("encoders", SquareEncoder(size), "square", "mine")
    message = str(caught.value)
    assert message.startswith("encoder 'square' of plugin 'mine' has input_size")
    assert "a positive int (a square size such as 32) or a pair (height, width)" in message
    assert message.count(". ") == 0 and message.endswith(").")  # one sentence


class SquarePlugin:
    @imgxfer.hookimpl
    def register_encoders(self, register):
        register("square", SquareEncoder)


def test_a_run_plans_with_an_encoder_whose_input_size_is_an_int(host, tmp_path) -> None:
    """plan.prepare read ``max(encoder.input_size)``: an int crashed with a TypeError."""
    from imgxfer.core.config import from_mapping
    from imgxfer.tasks.classify.plan import prepare

    host.add(SquarePlugin(), "square-plugin")
    config = from_mapping({"source": "tiny-source", "target": "tiny-target", "shots": 3,
                           "generator": "none", "encoder": {"name": "square", "input_size": 12},
                           "out": str(tmp_path)})
    plan = prepare(config, host.registry)
    assert plan.encoder.input_size == 12
    assert tuple(plan.split.test.images[:1].shape[-2:]) == (16, 16)  # kept in memory as given
