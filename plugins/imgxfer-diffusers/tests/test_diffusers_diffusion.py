"""Tests of the ``diffusion`` generator of imgxfer-diffusers, run against the installed
package and its entry point (``pip install './plugins/imgxfer-diffusers[test]'``), with a
tiny UNet on tiny images so that they take seconds."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress
from imgxfer.core.runfolder import atomic_save_tensors, read_tensors
from imgxfer.data.dataset import GeneratorData
from imgxfer.plugin.host import PluginHost
from imgxfer.plugin.protocols import FitResult, check_component
from imgxfer.plugin.testing import check_installed_plugin
from imgxfer_diffusers import DiffusionGenerator
from imgxfer_diffusers.diffusion import TRAINING_FORMAT

# A tiny denoiser: 8x8 model, 8 base channels, 3 denoising steps.
TINY: dict[str, Any] = dict(image_size=8, width=8, batch_size=8, sample_steps=3,
                            train_timesteps=50, checkpoint_every=2)
CLASSES = ["bar", "dot", "ring"]


def tiny_data(size: int = 12, channels: int = 1, seed: int = 0) -> GeneratorData:
    """Three classes, source images plus a few target shots (inverted), 12x12 pixels."""
    g = torch.Generator().manual_seed(seed)
    n_source, n_target = 8, 2
    labels = torch.arange(3).repeat(n_source + n_target)
    images = torch.zeros(len(labels), channels, size, size)
    for i, y in enumerate(labels.tolist()):
        o = int(torch.randint(2, size - 4, (1,), generator=g))
        if y == 0:
            images[i, :, o:o + 2, 1:-1] = 1
        elif y == 1:
            images[i, :, o:o + 3, o:o + 3] = 1
        else:
            images[i, :, 2:-2, 2:-2] = 1
            images[i, :, 4:-4, 4:-4] = 0
    is_target = torch.arange(len(labels)) >= 3 * n_source
    images[is_target] = 1 - images[is_target]
    domains = ["target" if t else "source" for t in is_target.tolist()]
    captions = [f"a {CLASSES[y]}, {'dark on light' if t else 'light on dark'}, domain {d}"
                for y, t, d in zip(labels.tolist(), is_target.tolist(), domains, strict=True)]
    return GeneratorData(images=images, labels=labels, captions=captions, domains=domains,
                         class_names=list(CLASSES), target_domain="target")


def fitted(steps: int = 4, data: GeneratorData | None = None, **options: Any
           ) -> tuple[DiffusionGenerator, FitResult]:
    gen = DiffusionGenerator(**{**TINY, **options})
    result = gen.fit(data or tiny_data(), budget=Budget(steps), progress=NullProgress())
    return gen, result


PROMPTS = ["a bar, dark on light, domain target", "a dot, dark on light, domain target",
           "a ring, dark on light, domain target", "a bar"]
LABELS = [0, 1, 2, 0]


def test_found_through_installed_entry_point() -> None:
    host = check_installed_plugin("diffusers", "imgxfer_diffusers",
                                  {"generators": ["diffusers:", "diffusion"]},
                                  "pip install './plugins/imgxfer-diffusers[test]'")
    component = host.registry.get("generators", "diffusion")
    assert component.options() == list(DiffusionGenerator().resolved_options())
    generator = host.registry.build("generators", "diffusion", {"width": 16})
    assert isinstance(generator, DiffusionGenerator) and generator.width == 16
    assert check_component("generators", generator, "diffusion", "diffusers") is generator


def test_importing_the_plugin_does_not_import_diffusers() -> None:
    code = ("import sys\n"
            "from imgxfer.plugin.host import PluginHost\n"
            "import imgxfer_diffusers\n"
            "host = PluginHost(env={'IMGXFER_LOAD_PLUGINS': 'diffusers'}).load_all()\n"
            "assert host.plugins['diffusers'].status == 'ok'\n"
            "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    assert out.strip() == "[]"


def test_fit_and_sample_shape_range_and_seed() -> None:
    gen, result = fitted(4)
    assert isinstance(result, FitResult) and result.steps == 4
    assert len(result.losses["loss"]) == 4 and all(math.isfinite(v) for v in result.losses["loss"])
    assert gen.num_classes == 3 and gen.conditioning == {"label", "text"}
    images = gen.sample(PROMPTS, LABELS, seed=1, device=torch.device("cpu"))
    # At the data's size and channels (12x12, 1), not the model's 8x8.
    assert images.shape == (4, 1, 12, 12) and images.dtype == torch.float32
    assert images.device.type == "cpu"
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
    assert torch.equal(images, gen.sample(PROMPTS, LABELS, seed=1, device="cpu"))
    assert not torch.equal(images, gen.sample(PROMPTS, LABELS, seed=2, device="cpu"))
    # One image per prompt, whatever the count, and nothing for nothing.
    assert gen.sample(PROMPTS[:1], LABELS[:1], seed=1).shape == (1, 1, 12, 12)
    assert gen.sample([], [], seed=1).shape == (0, 1, 12, 12)
    with pytest.raises(ValueError, match="class indices"):
        gen.sample(["x"], [3], seed=0)


def test_rgb_data_and_no_guidance() -> None:
    gen, _ = fitted(2, tiny_data(size=16, channels=3), guidance_scale=1.0)
    images = gen.sample(PROMPTS, LABELS, seed=0)
    assert images.shape == (4, 3, 16, 16) and 0 <= images.min() and images.max() <= 1


def test_state_dict_round_trip_through_safetensors(tmp_path: Path) -> None:
    gen, _ = fitted(3, sampler="dpm")
    atomic_save_tensors(tmp_path / "generator.safetensors", gen.state_dict())
    state, _ = read_tensors(tmp_path / "generator.safetensors")
    options = DiffusionGenerator.options_from_state(state)
    assert options == {"image_size": 8, "width": 8, "layers_per_block": 1, "embed_dim": 32,
                       "train_timesteps": 50}
    loaded = DiffusionGenerator(**{**options, "sample_steps": 3, "sampler": "dpm"})
    assert loaded.num_classes is None
    loaded.load_state_dict(state)
    assert loaded.num_classes == 3
    assert torch.equal(gen.sample(PROMPTS, LABELS, seed=5), loaded.sample(PROMPTS, LABELS, seed=5))
    with pytest.raises(UserError, match=r"trained with width=8 \(not 16\)"):
        DiffusionGenerator(**{**options, "width": 16}).load_state_dict(state)
    with pytest.raises(UserError, match="not saved by the diffusion generator"):
        DiffusionGenerator().load_state_dict({"x": torch.zeros(1)})


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    data = tiny_data()
    whole = tmp_path / "whole.safetensors"
    gen = DiffusionGenerator(**TINY)
    full = gen.fit(data, budget=Budget(5), progress=NullProgress(), checkpoint=whole)
    part = tmp_path / "part.safetensors"
    DiffusionGenerator(**TINY).fit(data, budget=Budget(3), progress=NullProgress(),
                                   checkpoint=part)
    # A new generator (a new process after an interruption) resumes from the file.
    again = DiffusionGenerator(**TINY)
    resumed = again.fit(data, budget=Budget(5), progress=NullProgress(), checkpoint=part,
                        resume=True)
    assert resumed.steps == full.steps == 5
    assert resumed.losses == full.losses
    a, meta_a = read_tensors(whole)
    b, meta_b = read_tensors(part)
    assert meta_a["format"] == meta_b["format"] == TRAINING_FORMAT
    assert (meta_a["step"], meta_a["ema_step"]) == (meta_b["step"], meta_b["ema_step"]) == ("5", "5")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert torch.equal(gen.sample(PROMPTS, LABELS, seed=0), again.sample(PROMPTS, LABELS, seed=0))
    # Budget spent already: nothing more to do, the same result.
    done = DiffusionGenerator(**TINY).fit(data, budget=Budget(5), progress=NullProgress(),
                                          checkpoint=part, resume=True)
    assert done.steps == 5


def test_resume_refuses_other_options_or_data(tmp_path: Path) -> None:
    data = tiny_data()
    path = tmp_path / "ckpt.safetensors"
    DiffusionGenerator(**TINY).fit(data, budget=Budget(2), progress=NullProgress(), checkpoint=path)
    with pytest.raises(UserError, match=r"other options: lr=0.001 \(not 0.002\)"):
        DiffusionGenerator(**{**TINY, "lr": 2e-3}).fit(
            data, budget=Budget(3), progress=NullProgress(), checkpoint=path, resume=True)
    other = tiny_data(seed=1)
    with pytest.raises(UserError, match="other data: the same shapes but other images"):
        DiffusionGenerator(**TINY).fit(other, budget=Budget(3), progress=NullProgress(),
                                       checkpoint=path, resume=True)
    # Sampling options do not matter to training: resuming with others is fine.
    DiffusionGenerator(**{**TINY, "sample_steps": 2}).fit(
        data, budget=Budget(3), progress=NullProgress(), checkpoint=path, resume=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot be read"):
        DiffusionGenerator(**TINY).fit(data, budget=Budget(3), progress=NullProgress(),
                                       checkpoint=path, resume=True)
    with pytest.raises(UserError, match="folder of the checkpoint"):
        DiffusionGenerator(**TINY).fit(data, budget=Budget(3), progress=NullProgress(),
                                       checkpoint=tmp_path / "no" / "c.safetensors")


def test_time_only_budget_stops_training() -> None:
    gen = DiffusionGenerator(**TINY)
    result = gen.fit(tiny_data(), budget=Budget(None, 0.5).start(), progress=NullProgress())
    assert result.steps >= 1 and len(result.losses["loss"]) == result.steps


@pytest.mark.parametrize("options, message", [
    ({"width": 12}, "width must be a multiple of 8, got 12."),
    ({"width": 0}, "width must be a positive integer, got 0."),
    ({"image_size": 10}, "image_size must be a multiple of 4 from 8 to 256, got 10."),
    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5."),
    ({"lr": 0.0}, "lr must be positive, got 0.0."),
    ({"guidance_scale": 0.5}, "guidance_scale must be 1 (no guidance) or more, got 0.5."),
    ({"cond_dropout": 1.0}, "cond_dropout must be in [0, 1), got 1.0."),
    ({"cond_dropout": 0.0, "guidance_scale": 2.0}, "guidance_scale 2.0 needs cond_dropout > 0"),
    ({"ema": 1.0}, "ema must be in [0, 1), got 1.0."),
    ({"target_weight": 1.5}, "target_weight must be in [0, 1], got 1.5."),
    ({"sampler": "euler"}, "sampler must be one of ddim, dpm, got 'euler'."),
    ({"sample_steps": 60, "train_timesteps": 50},
     "sample_steps (60) cannot exceed train_timesteps (50)."),
])
def test_invalid_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as error:
        DiffusionGenerator(**options)
    assert str(error.value).startswith("diffusion: ") and message in str(error.value)
    assert str(error.value).count(". ") == 0  # one sentence


def test_generator_contract() -> None:
    from imgxfer.plugin import testing

    testing.check_generator(DiffusionGenerator, **TINY)


def test_imgxfer_run_resume_and_generate_with_diffusion(tmp_path, monkeypatch) -> None:
    """The generator through the whole chain, as a user runs it: `imgxfer run` writes a
    run folder with generator.safetensors; an interrupted run resumes from the training
    checkpoint in its folder; `imgxfer generate` rebuilds the generator from the file."""
    import json

    from click.testing import CliRunner

    from imgxfer.cli.app import cli
    from imgxfer.core import runfolder
    from imgxfer.plugin import host as plugins
    from imgxfer.tasks.classify.stages import generate

    monkeypatch.setenv("IMGXFER_CACHE", str(tmp_path / "cache"))  # the probe's feature cache
    monkeypatch.setattr(plugins, "_HOST",
                        PluginHost({"IMGXFER_LOAD_PLUGINS": "diffusers"}).load_all())
    args = ["run", "--source", "syndigits", "--source-opt", "n_per_class=6", "--target",
            "digits", "--shots", "2", "--encoder-opt", "width=4", "--encoder-opt",
            "input_size=16", "--encoder-steps", "5", "--generator", "diffusion",
            *[f"--generator-opt={k}={v}" for k, v in TINY.items()], "--generator-steps", "6",
            "--synthetic-per-class", "2", "--adapter", "linear", "--no-quality",
            "--out", str(tmp_path / "runs")]

    # Interrupted right after the generator's training: the run folder holds the
    # checkpoint (every 2 steps) and failed.json, no metrics.json.
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(generate, "check_images", interrupted)
        result = CliRunner().invoke(cli, args)
    (folder,) = (tmp_path / "runs").iterdir()
    assert result.exit_code != 0  # click turns Ctrl-C into "Aborted!"
    assert json.loads((folder / "failed.json").read_text())["status"] == "interrupted"
    assert (folder / runfolder.TRAINING_CHECKPOINT).is_file()

    result = CliRunner().invoke(cli, ["run", "--resume", str(folder)])
    assert result.exit_code == 0, result.output
    assert "diffusion: resumed from" in result.output
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["generator"]["name"] == "diffusion" and metrics["generator"]["steps"] == 6
    assert not (folder / "failed.json").exists()

    out = tmp_path / "sevens"
    result = CliRunner().invoke(cli, ["generate", "--from", str(folder), "--prompt",
                                      "a handwritten digit seven", "--n", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png", "002.png", "grid.png"]


# -- image-to-image (SDEdit) for --synthesis shots and translate -------------------------

def _fitted(data: GeneratorData, steps: int = 3, **options: Any) -> DiffusionGenerator:
    gen = DiffusionGenerator(**{**TINY, **options})
    gen.fit(data, budget=Budget(steps).start(), progress=NullProgress())
    return gen


def test_edit_strength_sets_how_much_of_the_input_survives():
    data = tiny_data()
    images, labels = data.images[:6], data.labels[:6]
    prompts = ["p"] * 6
    light = _fitted(data, strength=0.05, sample_steps=20).edit(images, labels, prompts, seed=0)
    full = _fitted(data, strength=1.0, sample_steps=20).edit(images, labels, prompts, seed=0)
    assert light.shape == images.shape and 0 <= light.min() and light.max() <= 1
    # A light edit stays near its input (the model is barely trained: a full redraw is noise).
    assert (light - images).abs().mean() < 0.5 * (full - images).abs().mean()


def test_translate_learns_unlabelled_target_images_under_the_null_token():
    from dataclasses import replace

    data = tiny_data()
    unlabelled = torch.rand(5, 1, 12, 12)
    gen = DiffusionGenerator(**TINY)
    plain = gen._training_set(data)
    assert plain[4] is None and len(plain[0]) == len(data.images)
    images, tokens, texts, domains, force = gen._training_set(
        replace(data, synthesis="translate", unlabelled=unlabelled))
    n, null = len(data.images), 2 * len(CLASSES)
    assert len(images) == n + 5 and (tokens[n:] == null).all() and texts[n:] == [""] * 5
    is_target = torch.tensor([d == data.target_domain for d in data.domains])
    assert (force[:n][~is_target] == 1).all() and (force[:n][is_target] == -1).all()
    assert (force[n:] == 0).all() and set(domains[n:]) == {data.target_domain}
    gen.fit(replace(data, synthesis="translate", unlabelled=unlabelled),
            budget=Budget(2).start(), progress=NullProgress())
    fresh = DiffusionGenerator(**TINY)
    fresh.load_state_dict(gen.state_dict())
    assert fresh._translates
    out = gen.edit(data.images[:3], data.labels[:3], ["p"] * 3, seed=1)
    assert torch.equal(out, fresh.edit(data.images[:3], data.labels[:3], ["p"] * 3, seed=1))


def test_strength_is_checked():
    with pytest.raises(UserError, match="strength must be in \\(0, 1\\]"):
        DiffusionGenerator(strength=0)


def test_checkpoints_by_time_as_well_as_steps(tmp_path: Path, monkeypatch) -> None:
    """With the clock's interval at 0 s every step is due, though checkpoint_every is
    far away: a killed run loses at most CHECKPOINT_SECONDS of training."""
    from imgxfer.nn import generator_training as training

    gen = DiffusionGenerator(**{**TINY, "checkpoint_every": 1000})
    saved: list[int] = []
    real_save = gen._save_training
    monkeypatch.setattr(gen, "_save_training",
                        lambda path, state: (saved.append(state.step), real_save(path, state)))
    monkeypatch.setattr(training, "CHECKPOINT_SECONDS", 0.0)
    gen.fit(tiny_data(), budget=Budget(3), progress=NullProgress(),
            checkpoint=tmp_path / "train.safetensors")
    assert saved == [1, 2, 3]
    monkeypatch.setattr(training, "CHECKPOINT_SECONDS", 1e9)
    saved.clear()
    gen.fit(tiny_data(), budget=Budget(3), progress=NullProgress(),
            checkpoint=tmp_path / "other.safetensors")
    assert saved == [3]  # only at the end
