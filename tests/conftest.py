"""Shared fixtures: an isolated plugin host with a fake plugin of tiny, deterministic
components, so tests never depend on what else is installed."""

from __future__ import annotations

import pytest
import torch

import imgxfer
from imgxfer.data.dataset import ImageDataset
from imgxfer.plugin import host as plugins

CLASSES = ["horizontal", "vertical", "dot"]


def tiny_bars(domain: str, n_per_class: int = 30, size: int = 16, seed: int = 0,
              invert: bool = False) -> ImageDataset:
    """Three trivially separable shapes with jitter; ``invert`` makes a shifted domain."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(3 * n_per_class, 1, size, size)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    for i, y in enumerate(labels.tolist()):
        o = int(torch.randint(3, size - 5, (1,), generator=g))
        if y == 0:
            images[i, 0, o:o + 2, 2:-2] = 1
        elif y == 1:
            images[i, 0, 2:-2, o:o + 2] = 1
        else:
            images[i, 0, o:o + 3, o:o + 3] = 1
    images = (images + 0.1 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    if invert:
        images = 1 - images
    return ImageDataset(images, labels, list(CLASSES), domain, description="tiny shape")


class FakePlugin:
    """A third-party-style plugin object with tiny datasets."""

    @imgxfer.hookimpl
    def register_datasets(self, register):
        register("tiny-source", lambda n_per_class=30, seed=0: tiny_bars("tiny-source", n_per_class, seed=seed),
                 description="three bar shapes (source)")
        register("tiny-target", lambda n_per_class=30, seed=0: tiny_bars("tiny-target", n_per_class, seed=seed + 7, invert=True),
                 description="three bar shapes, inverted (target)")
        from scenes_fixture import register_tiny_scenes

        register_tiny_scenes(register)


@pytest.fixture(autouse=True)
def feature_cache_dir(tmp_path_factory, monkeypatch):
    """The linear probes cache features by default: keep every test's cache (and
    download folder) out of the user's ~/.cache."""
    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def host(monkeypatch):
    """A fresh host with only built-ins plus the fake plugin; installed entry points are
    not loaded. It is also the host the CLI uses, and is discarded afterwards."""
    env = {"IMGXFER_LOAD_PLUGINS": ""}
    h = plugins.PluginHost(env).load_all()
    h.add(FakePlugin(), "fake", version="0.0.1")
    monkeypatch.setattr(plugins, "_HOST", h)
    yield h
    plugins.reset_host()


TINY_RUN = [
    "--source", "tiny-source", "--target", "tiny-target", "--shots", "3",
    "--encoder-opt", "width=4", "--encoder-opt", "input_size=16",
    "--generator-opt", "width=8", "--generator-opt", "image_size=16",
    "--encoder-steps", "30", "--generator-steps", "5", "--adapter-steps", "40",
    "--synthetic-per-class", "4",
]


def tiny_compare_run(tmp_path_factory, compare: str):
    """The folder of a tiny run (no generator) that compared ``compare`` adapters, made
    with the built-ins and the fake plugin only; for module-scoped fixtures."""
    from click.testing import CliRunner

    from imgxfer.cli.app import cli

    out = tmp_path_factory.mktemp("runs")
    h = plugins.PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    h.add(FakePlugin(), "fake")
    plugins._HOST = h
    try:
        result = CliRunner().invoke(cli, ["run", *TINY_RUN, "--generator", "none",
                                          "--compare", compare, "--out", str(out)])
    finally:
        plugins.reset_host()
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    return folder, result
