"""Plugins written only from imgxfer.plugin.protocols: a generator and an adapter run through
`imgxfer run`, `imgxfer generate` and `imgxfer predict`; components that break their
protocol are named in one sentence, and a run that crashes marks its folder failed."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_RUN

import imgxfer
from imgxfer.cli.app import cli
from imgxfer.plugin.testing import check_adapter, check_generator


class MeanGenerator:
    """Per class, the mean image of its target-domain images plus seeded noise."""

    conditioning = frozenset({"label"})

    def __init__(self, noise: float = 0.1) -> None:
        self.noise = noise
        self.means: torch.Tensor | None = None

    def fit(self, data, *, budget, progress, device):
        target = torch.tensor([d == data.target_domain for d in data.domains])
        self.means = torch.stack([data.images[(data.labels == c) & target].mean(0)
                                  for c in range(len(data.class_names))])
        return imgxfer.FitResult(steps=1, losses={"none": [0.0]})

    def sample(self, prompts, labels, *, seed, device):
        g = torch.Generator().manual_seed(seed)
        base = self.means[torch.as_tensor(labels, dtype=torch.long)]
        return (base + self.noise * torch.randn(base.shape, generator=g)).clamp(0, 1)

    def state_dict(self):
        return {"means": self.means}

    def load_state_dict(self, state):
        self.means = state["means"]


class NearestMean:
    """A nearest-class-mean classifier on the frozen encoder's features of the target
    shots and the synthetic images, written as the linear head of an imgxfer Classifier (<f, m_c> - |m_c|^2 / 2
    ranks the classes as -|f - m_c|^2 does)."""

    uses = frozenset({"target_labelled", "synthetic"})
    trains_by_steps = False

    def fit(self, encoder, data, *, budget, progress, device):
        encoder.eval()
        model = imgxfer.Classifier(encoder, len(data.class_names)).to(device)
        sets = [s for s in (data.target_labelled, data.synthetic) if s is not None and len(s)]
        with torch.no_grad():
            features = torch.cat([encoder(encoder.preprocess(s.images[:].to(device)))
                                  for s in sets])
            labels = torch.cat([s.labels for s in sets]).to(device)
            means = torch.stack([features[labels == c].mean(0)
                                 for c in range(len(data.class_names))])
            model.head.weight.copy_(means)
            model.head.bias.copy_(-(means ** 2).sum(1) / 2)
        return model.eval()


class Pixels(torch.nn.Module):
    """An encoder without pretrain: the 8x8 grey pixels as features."""

    feature_dim, input_size, in_channels, weights_source = 64, (8, 8), 1, "none"

    def preprocess(self, images):
        return torch.nn.functional.interpolate(images.mean(1, keepdim=True), size=(8, 8))

    def forward(self, x):
        return x.flatten(1)


class DocsPlugin:
    @imgxfer.hookimpl
    def register_encoders(self, register):
        register("pixels", Pixels)

    @imgxfer.hookimpl
    def register_generators(self, register):
        register("mean", MeanGenerator)

    @imgxfer.hookimpl
    def register_adapters(self, register):
        register("nearest-mean", NearestMean)


class BrokenPlugin:
    @imgxfer.hookimpl
    def register_generators(self, register):
        register("no-sample", lambda: type("G", (), {"conditioning": {"label"},
                                                     "fit": None})())
        register("a-function", lambda: (lambda: None))
        register("crashes", CrashingGenerator)

    @imgxfer.hookimpl
    def register_adapters(self, register):
        register("own-module", OwnModule)


class CrashingGenerator(MeanGenerator):
    def sample(self, prompts, labels, *, seed, device):
        raise ZeroDivisionError("a bug inside the plugin")


class OwnModule(NearestMean):
    def fit(self, encoder, data, *, budget, progress, device):
        return torch.nn.Sequential(encoder, torch.nn.Linear(encoder.feature_dim, 3))


# The tiny run without the GAN's options.
RUN = [a for i, a in enumerate(TINY_RUN) if "--generator-opt" not in TINY_RUN[max(0, i - 1):i + 1]]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def docs_host(host):
    host.add(DocsPlugin(), "docs", version="0.0.1")
    host.add(BrokenPlugin(), "broken", version="0.0.1")
    return host


def test_the_docs_components_keep_their_protocols() -> None:
    check_generator(MeanGenerator)
    check_adapter(NearestMean)


def test_a_generator_and_adapter_from_the_docs_run_end_to_end(docs_host, tmp_path) -> None:
    result = invoke("run", *RUN, "--generator", "mean", "--adapter", "nearest-mean",
                    "--out", tmp_path / "runs", "--no-quality")
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "runs").iterdir())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["generator"]["steps"] == 1 and metrics["generator"]["synthetic_images"] == 12
    assert metrics["adapters"]["nearest-mean"]["steps"] is None
    assert metrics["target"]["accuracy"] > 0.5  # three separable shapes
    assert "no steps" in (folder / "report.html").read_text()

    out = tmp_path / "drawn"
    result = invoke("generate", "--from", folder, "--prompt", "a dot", "--n", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert "follows the class only" in result.output  # conditioning = {"label"}
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "002.png", "grid.png"]

    result = invoke("predict", folder / "samples.png", "--from", folder, "-o", "-")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("path,predicted,confidence")


@pytest.mark.parametrize("generator, words", [
    ("no-sample", "generator 'no-sample' of plugin 'broken' breaks the generator protocol: "
                  "it has no sample"),
    ("a-function", "generator 'a-function' of plugin 'broken': its factory returned"),
])
def test_a_component_that_breaks_its_protocol_is_one_sentence(docs_host, tmp_path, generator,
                                                              words) -> None:
    result = invoke("run", *RUN, "--generator", generator, "--out", tmp_path / "runs")
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # refused before any folder was made


def test_an_adapter_that_returns_its_own_module_is_one_sentence(docs_host, tmp_path) -> None:
    result = invoke("run", *RUN, "--generator", "none", "--adapter", "own-module",
                    "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert "adapter 'own-module' returned a Sequential, not an imgxfer.nn.classifier.Classifier" \
        in result.output
    folder = next((tmp_path / "runs").iterdir())
    assert json.loads((folder / "failed.json").read_text())["status"] == "failed"
    assert not (folder / "metrics.json").exists()


def test_a_run_that_crashes_marks_its_folder_failed(docs_host, tmp_path) -> None:
    result = invoke("run", *RUN, "--generator", "crashes", "--out", tmp_path / "runs")
    assert isinstance(result.exception, ZeroDivisionError)  # an internal bug still raises
    folder = next((tmp_path / "runs").iterdir())
    failed = json.loads((folder / "failed.json").read_text())
    assert failed == {"status": "failed", "error": "ZeroDivisionError",
                      "message": "a bug inside the plugin",
                      "resume": f"imgxfer run --resume {folder}"}
    log = (folder / "run.log").read_text()
    assert "run failed" in log and "Traceback" in log and "a bug inside the plugin" in log


def test_encoder_steps_for_an_encoder_that_does_not_pretrain_are_said(docs_host, tmp_path) -> None:
    result = invoke("run", "--source", "tiny-source", "--target", "tiny-target", "--shots", 3,
                    "--encoder", "pixels", "--encoder-steps", "7",
                    "--generator", "none", "--adapter", "nearest-mean", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "encoder pixels does not train on the source" in " ".join(result.output.split())


def test_the_plugin_api_is_public_from_the_package() -> None:
    from imgxfer.core.budget import Budget
    from imgxfer.core.progress import NullProgress, Progress
    from imgxfer.nn.classifier import Classifier

    assert (imgxfer.Budget, imgxfer.Classifier, imgxfer.Progress, imgxfer.NullProgress) == (
        Budget, Classifier, Progress, NullProgress)
    assert imgxfer.FitResult(3).losses == {}
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = imgxfer.Nope
