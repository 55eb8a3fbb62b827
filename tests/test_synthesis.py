"""--synthesis text|shots|translate: which images a generator edits, the modes a generator
declares, the GAN's translator, and the run end to end."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_RUN, tiny_bars

import imgxfer
from imgxfer.cli.app import cli
from imgxfer.components.generators.gan import ConditionalGAN
from imgxfer.core.budget import Budget
from imgxfer.core.config import RunConfig
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress
from imgxfer.data.dataset import few_shot_split
from imgxfer.plugin.protocols import check_component
from imgxfer.plugin.testing import tiny_generator_data
from imgxfer.tasks.classify.synthesis import check_mode, choose_mode, edit_inputs

CPU = torch.device("cpu")


def _split(shots=2):
    return few_shot_split(tiny_bars("target", n_per_class=10, invert=True), shots, seed=0)


def test_shots_mode_edits_each_labelled_image_in_turn():
    split = _split(shots=2)
    inputs = edit_inputs("shots", tiny_bars("source"), split, per_class=5, seed=0)
    assert inputs.domain == "target" and inputs.class_counts() == [5, 5, 5]
    for c in range(3):
        shots = split.labelled.images[split.labelled.labels == c]
        picked = inputs.images[inputs.labels == c]
        # 5 edits of 2 shots: each shot 2 or 3 times, no other image.
        uses = [sum(torch.equal(p, s) for p in picked) for s in shots]
        assert sorted(uses) == [2, 3]


def test_translate_mode_draws_source_images_without_repeats():
    source = tiny_bars("source", n_per_class=6)
    inputs = edit_inputs("translate", source, _split(shots=0), per_class=4, seed=0)
    assert inputs.domain == "source" and inputs.class_counts() == [4, 4, 4]
    assert len({tuple(x.flatten().tolist()) for x in inputs.images.tensor()}) == 12
    more = edit_inputs("translate", source, _split(shots=0), per_class=9, seed=0)
    assert more.class_counts() == [9, 9, 9]  # past the class's 6, it starts over
    assert torch.equal(inputs.images.tensor(),
                       edit_inputs("translate", source, _split(0), 4, 0).images.tensor())


def test_a_mode_the_generator_cannot_do_is_one_sentence(host):
    with pytest.raises(UserError, match=r"generator 'gan' cannot do --synthesis shots "
                                        r"\(it does text, translate\)"):
        check_mode("shots", ConditionalGAN(), "gan", host.registry)
    check_mode("translate", ConditionalGAN(), "gan", host.registry)


def test_config_allows_zero_shots_only_for_translate():
    RunConfig(shots=0, synthesis="translate").validate()
    with pytest.raises(UserError, match="--shots 0 leaves no labelled target images for the "
                                        "generator 'gan' to edit"):
        RunConfig(shots=0, synthesis="shots").validate()
    with pytest.raises(UserError, match="synthesis must be one of auto, text, shots, translate"):
        RunConfig(synthesis="paint").validate()


class _Modes:
    """A generator that declares ``modes`` and nothing else (choose_mode reads only that)."""

    def __init__(self, *modes: str) -> None:
        self.synthesis = frozenset(modes)


@pytest.mark.parametrize("modes, unlabelled, chosen, why", [
    (("text", "translate"), 50, "translate", "gan can translate and the target has 50 "
                                             "unlabelled images"),
    (("text", "translate"), 0, "text", "the target has no unlabelled images"),
    (("text",), 50, "text", "gan cannot translate, so gan draws images from prompts"),
    (("shots", "translate"), 7, "translate", "7 unlabelled images"),
])
def test_auto_chooses_translate_where_it_can_else_text(modes, unlabelled, chosen, why):
    mode, reason = choose_mode(_Modes(*modes), "gan", unlabelled)
    assert mode == chosen and reason.startswith("auto: ") and why in reason


@pytest.mark.parametrize("modes, unlabelled, hint", [
    (("shots",), 50, "needs a generator that can, or choose --synthesis shots"),
    (("shots", "translate"), 0, "needs unlabelled target images (lower --shots or "
                                "--test-fraction), or choose --synthesis shots or translate"),
])
def test_auto_with_a_generator_that_can_do_neither_is_one_sentence(modes, unlabelled, hint):
    with pytest.raises(UserError, match="--synthesis auto: generator 'diffusion' can neither "
                                        "translate here nor draw from prompts") as error:
        choose_mode(_Modes(*modes), "diffusion", unlabelled)
    assert hint in str(error.value) and len(str(error.value).splitlines()) == 1


def test_auto_is_the_default_and_a_run_records_its_choice(host, tmp_path):
    """The default run translates where it can: config.toml and the report say so and
    why, and the run resumes against its own (resolved) config."""
    from imgxfer.core.config import load, same_run

    assert RunConfig().synthesis == "auto"
    result = CliRunner().invoke(cli, ["run", *TINY_RUN, "--no-quality", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    saved = load(folder / "config.toml")
    assert saved.synthesis == "translate" and "unlabelled images" in saved.synthesis_reason
    assert same_run(saved, replace(saved, synthesis="auto", synthesis_reason="", out="x"))
    assert not same_run(saved, replace(saved, synthesis="text"))
    assert "--synthesis translate (auto: gan can translate" in " ".join(result.output.split())
    assert json.loads((folder / "metrics.json").read_text())["generator"]["synthesis"] == \
        "translate"
    assert "auto: gan can translate" in (folder / "report.html").read_text()


def test_a_generator_that_declares_edits_must_have_edit():
    class NoEdit:
        conditioning = frozenset({"label"})
        synthesis = frozenset({"text", "shots"})

        def fit(self, *a, **k): ...
        def sample(self, *a, **k): ...
        def state_dict(self): ...
        def load_state_dict(self, s): ...

    with pytest.raises(UserError, match="it has no edit"):
        check_component("generators", NoEdit(), "noedit", "p")


def _translate_data():
    """The contract kit's tiny data as a translate run passes it (target shots also as
    the unlabelled target images), and which images are the target's."""
    data = tiny_generator_data()
    is_target = torch.tensor([d == data.target_domain for d in data.domains])
    return replace(data, synthesis="translate", unlabelled=data.images[is_target]), is_target


def test_gan_translator_trains_translates_and_round_trips():
    data, is_target = _translate_data()
    gan = ConditionalGAN(width=8, image_size=16, batch_size=8)
    result = gan.fit(data, budget=Budget(3).start(), progress=NullProgress(), device=CPU)
    assert result.steps == 3 and set(result.losses) == {"d_loss", "g_loss", "content_loss"}
    source = data.images[~is_target][:5]
    out = gan.edit(source, data.labels[:5], ["p"] * 5, seed=1, device=CPU)
    assert out.shape == (5, 1, 16, 16) and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, gan.edit(source, data.labels[:5], ["p"] * 5, seed=2, device=CPU))
    with pytest.raises(UserError, match="trained to translate images"):
        gan.sample(["p"], [0], seed=0)
    fresh = ConditionalGAN(width=8, image_size=16)
    fresh.load_state_dict(gan.state_dict())
    assert fresh.num_classes == 3
    assert torch.equal(fresh.edit(source, data.labels[:5], ["p"] * 5, seed=1, device=CPU), out)
    assert ConditionalGAN.options_from_state(gan.state_dict()) == {"z_dim": 64, "width": 8,
                                                                   "image_size": 16}
    with pytest.raises(UserError, match="was trained with width=8 \\(not 16\\)"):
        ConditionalGAN(width=16, image_size=16).load_state_dict(gan.state_dict())


def test_translator_checkpoints_by_time_and_resumes(tmp_path, monkeypatch):
    """The translator's training is checkpointed like the sampler's (every N steps and
    every CHECKPOINT_SECONDS): a run killed mid-training resumes to the same weights."""
    from imgxfer.components.generators.gan import read_checkpoint
    from imgxfer.nn import generator_training as training

    class Killed(Exception):
        pass

    class KillAfter(NullProgress):
        def __init__(self, steps):
            self.steps = steps

        @contextmanager
        def task(self, description, total):
            outer, done = self, [0]

            class Task:
                def advance(self, n=1, **info):
                    done[0] += n
                    if done[0] >= outer.steps:
                        raise Killed

            yield Task()

    data, _ = _translate_data()
    options = dict(width=4, image_size=16, batch_size=4, checkpoint_every=250)
    whole = ConditionalGAN(**options)
    whole.fit(data, budget=Budget(5), progress=NullProgress(), device=CPU)
    monkeypatch.setattr(training, "CHECKPOINT_SECONDS", 0.0)
    path = tmp_path / "generator-train.safetensors"
    with pytest.raises(Killed):
        ConditionalGAN(**options).fit(data, budget=Budget(5), progress=KillAfter(2),
                                      device=CPU, checkpoint=path)
    meta = read_checkpoint(path)[1]
    assert meta["format"] == "imgxfer.gan.translation" and meta["step"] == "2"
    resumed = ConditionalGAN(**options)
    result = resumed.fit(data, budget=Budget(5), progress=NullProgress(), device=CPU,
                         checkpoint=path, resume=True)
    assert result.steps == 5 and result.losses == whole.history
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(),
                                                 whole.state_dict().values(), strict=True))
    with pytest.raises(UserError, match="trained with other options: content_weight"):
        ConditionalGAN(**options, content_weight=2.0).fit(
            data, budget=Budget(6), progress=NullProgress(), device=CPU, checkpoint=path,
            resume=True)


def test_semantic_consistency_trains_a_frozen_classifier_that_the_translator_must_satisfy(
        tmp_path, monkeypatch):
    """semantic_weight > 0: a classifier trained on style-randomised source images, frozen,
    adds a loss to the translator's (logged as semantic_loss); it is checkpointed with the
    other networks, and a checkpoint from before the option resumes as semantic_weight 0."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from imgxfer.components.generators import translation

    monkeypatch.setattr(translation, "SEMANTIC_STEPS", 3)
    data, _ = _translate_data()
    options = dict(width=4, image_size=16, batch_size=4)
    plain = ConditionalGAN(**options).fit(data, budget=Budget(2), progress=NullProgress(),
                                          device=CPU)
    gan = ConditionalGAN(**options, semantic_weight=1.0)
    path = tmp_path / "train.safetensors"
    result = gan.fit(data, budget=Budget(2), progress=NullProgress(), device=CPU,
                     checkpoint=path)
    assert set(result.losses) == {"d_loss", "g_loss", "content_loss", "semantic_loss"}
    assert all(v > 0 for v in result.losses["semantic_loss"])
    # The critic and the content classifier see the same batches; the translator's loss
    # differs, so its second step's critic loss does.
    assert result.losses["d_loss"][0] == plain.losses["d_loss"][0]
    assert result.losses["g_loss"] != plain.losses["g_loss"]
    assert any(k.startswith("s.") for k in load_file(path))
    # Resumed, the classifier comes from the checkpoint: it is not trained again.
    trained = []
    real_train = translation._train_semantic
    monkeypatch.setattr(translation, "_train_semantic",
                        lambda *a, **k: trained.append(1) or real_train(*a, **k))
    again = ConditionalGAN(**options, semantic_weight=1.0).fit(
        data, budget=Budget(3), progress=NullProgress(), device=CPU, checkpoint=path,
        resume=True)
    assert again.steps == 3 and trained == []
    assert again.losses["semantic_loss"][:2] == result.losses["semantic_loss"]
    with pytest.raises(UserError, match="semantic_weight must be zero or more"):
        ConditionalGAN(semantic_weight=-1)
    # An older translator checkpoint: no semantic_weight recorded, no s. networks.
    ConditionalGAN(**options).fit(data, budget=Budget(2), progress=NullProgress(),
                                  device=CPU, checkpoint=path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    saved = json.loads(meta["options"])
    del saved["semantic_weight"]
    save_file(load_file(path), path, {**meta, "options": json.dumps(saved)})
    resumed = ConditionalGAN(**options).fit(data, budget=Budget(3), progress=NullProgress(),
                                            device=CPU, checkpoint=path, resume=True)
    assert resumed.steps == 3
    with pytest.raises(UserError, match="semantic_weight=0.0 \\(not 1.0\\)"):
        ConditionalGAN(**options, semantic_weight=1.0).fit(
            data, budget=Budget(4), progress=NullProgress(), device=CPU, checkpoint=path,
            resume=True)


def test_gan_translate_needs_target_images_and_a_text_gan_cannot_edit():
    data = replace(tiny_generator_data(), synthesis="translate")
    with pytest.raises(UserError, match="--synthesis translate needs target-domain images"):
        ConditionalGAN().fit(data, budget=Budget(1).start(), progress=NullProgress())
    gan = ConditionalGAN(width=8, image_size=16, batch_size=8)
    gan.fit(tiny_generator_data(), budget=Budget(1).start(), progress=NullProgress())
    with pytest.raises(UserError, match="was not trained to translate images"):
        gan.edit(torch.zeros(1, 1, 16, 16), [0], ["p"], seed=0)


def test_run_translate_at_zero_shots_end_to_end(host, tmp_path):
    at = TINY_RUN.index("--shots") + 1
    args = TINY_RUN[:at] + ["0"] + TINY_RUN[at + 1:]
    result = CliRunner().invoke(cli, ["run", *args, "--synthesis", "translate",
                                      "--compare-synthetic", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    gen = metrics["generator"]
    assert gen["synthesis"] == "translate" and gen["synthetic_images"] == 12
    assert 0 <= gen["label_kept"] <= 1 and 0 <= gen["cas_real"] <= 1
    assert "finetune" in metrics["synthetic_delta"]
    page = (folder / "report.html").read_text()
    assert "What the synthetic images were made from" in page
    assert "labelled source images" in page and "Label kept" in page
    assert 'synthesis = "translate"' in (folder / "config.toml").read_text()


def test_run_refuses_a_mode_the_generator_cannot_do(host, tmp_path):
    result = CliRunner().invoke(cli, ["run", *TINY_RUN, "--synthesis", "shots",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "cannot do --synthesis shots" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())
    bad = CliRunner().invoke(cli, ["run", *TINY_RUN, "--synthesis", "paint"])
    assert bad.exit_code == 2 and "Invalid value for '--synthesis'" in bad.output


def test_translator_trains_with_a_batch_of_one():
    data, is_target = _translate_data()
    gan = ConditionalGAN(width=8, image_size=16, batch_size=1)
    result = gan.fit(data, budget=Budget(2).start(), progress=NullProgress(), device=CPU)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in result.losses.values())


def test_one_network_at_a_time():
    data = tiny_generator_data()
    translate, _ = _translate_data()
    gan = ConditionalGAN(width=8, image_size=16, batch_size=8)
    gan.fit(translate, budget=Budget(1).start(), progress=NullProgress())
    gan.fit(data, budget=Budget(1).start(), progress=NullProgress())  # text after translate
    assert "meta.translator" not in gan.state_dict() and gan.sample(["p"], [0]).shape[0] == 1
    gan.fit(translate, budget=Budget(1).start(), progress=NullProgress())
    assert "meta.translator" in gan.state_dict()
    with pytest.raises(UserError, match="trained to translate"):
        gan.sample(["p"], [0])


def test_synthesis_needs_a_generator_and_translate_needs_unlabelled_images(host, tmp_path):
    with pytest.raises(UserError, match="--synthesis translate makes images with a generator"):
        RunConfig(generator="none", synthesis="translate").validate()
    at = TINY_RUN.index("--shots") + 1  # 30 per class, 9 held out: 21 shots leave none
    args = TINY_RUN[:at] + ["21"] + TINY_RUN[at + 1:]
    result = CliRunner().invoke(cli, ["run", *args, "--synthesis", "translate",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "leave none besides the test split" in result.output
    assert not list(tmp_path.iterdir())  # refused before a folder was made


def test_generate_edits_images_with_a_translate_run(host, tmp_path):
    at = TINY_RUN.index("--shots") + 1
    args = TINY_RUN[:at] + ["0"] + TINY_RUN[at + 1:]
    runner = CliRunner()
    assert runner.invoke(cli, ["run", *args, "--synthesis", "translate", "--no-quality",
                               "--out", str(tmp_path / "runs")]).exit_code == 0
    (folder,) = (tmp_path / "runs").iterdir()
    result = runner.invoke(cli, ["generate", "--from", str(folder), "--images", "tiny-source",
                                 "--n", "5", "--out", str(tmp_path / "edited")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "edited").glob("0*.png"))) == 5
    assert "wrote 5 images" in result.output
    refused = runner.invoke(cli, ["generate", "--from", str(folder), "--prompt", "a dot",
                                  "--out", str(tmp_path / "drawn")])
    assert refused.exit_code == 2 and "trained to translate images" in refused.output
    missing = runner.invoke(cli, ["generate", "--from", str(folder), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--prompt is needed" in missing.output


def test_generate_refuses_to_edit_with_a_text_generator(host, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["run", *TINY_RUN, "--no-quality", "--synthesis", "text",
                               "--out", str(tmp_path / "runs")]).exit_code == 0
    (folder,) = (tmp_path / "runs").iterdir()
    result = runner.invoke(cli, ["generate", "--from", str(folder), "--images", "tiny-source",
                                 "--out", str(tmp_path / "edited")])
    assert result.exit_code == 2 and "was not trained to translate images" in result.output


class ColourPlugin:
    """A colour target: the tiny bars on a coloured background."""

    @imgxfer.hookimpl
    def register_datasets(self, register):
        def tiny_colour(n_per_class=30, seed=0):
            grey = tiny_bars("tiny-colour", n_per_class, seed=seed + 7)
            tint = torch.tensor([0.9, 0.3, 0.1]).view(1, 3, 1, 1)
            images = grey.images.tensor()
            return replace(grey, images=images * tint + (1 - images) * tint.flip(1))

        register("tiny-colour", tiny_colour, description="bars on colour (target)")


def test_a_colour_target_gets_a_colour_smallcnn_that_predict_rebuilds(host, tmp_path):
    host.add(ColourPlugin(), "colour")
    at = TINY_RUN.index("--target") + 1
    args = TINY_RUN[:at] + ["tiny-colour"] + TINY_RUN[at + 1:]
    runner = CliRunner()
    result = runner.invoke(cli, ["run", *args, "--generator", "none",
                                 "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").iterdir()
    assert "in_channels = 3" in (folder / "config.toml").read_text()
    assert folder.name.endswith("tiny-source-to-tiny-colour")  # the default name: the pair
    predicted = runner.invoke(cli, ["predict", "tiny-colour", "--from", str(folder),
                                    "--out", str(tmp_path / "p.csv")])
    assert predicted.exit_code == 0, predicted.output
    grey = runner.invoke(cli, ["run", *TINY_RUN, "--generator", "none",
                               "--out", str(tmp_path / "grey")])
    assert grey.exit_code == 0
    (grey_folder,) = (tmp_path / "grey").iterdir()
    assert "in_channels = 1" in (grey_folder / "config.toml").read_text()


def test_sample_grid_lays_out_sets_of_any_size_and_channels():
    """Grey 28-px, RGB 32-px and RGBA 224x160 sets in one grid: one PNG whose size does
    not grow with the images (large ones are shrunk to a cell), empty classes left blank."""
    import io

    import torch
    from PIL import Image

    from imgxfer.data.dataset import ImageDataset
    from imgxfer.tasks.classify.report import sample_grid

    names = ["a", "b", "c"]
    labels = torch.tensor([0, 1, 0, 1])  # no image of class c
    sets = {"grey": ImageDataset(torch.rand(4, 1, 28, 28), labels, names, "g"),
            "rgb": ImageDataset(torch.rand(4, 3, 32, 32), labels, names, "r"),
            "big": ImageDataset(torch.rand(4, 4, 224, 160), labels, names, "b"),
            "empty": None}
    small = Image.open(io.BytesIO(sample_grid(names, {"grey": sets["grey"]}, per_class=2)))
    grid = Image.open(io.BytesIO(sample_grid(names, sets, per_class=2)))
    assert abs(grid.height - small.height) <= 5 and 2 * small.width < grid.width < 6 * small.width
