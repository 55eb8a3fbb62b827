"""`imgxfer tune` (issue 16, part 3): tunable declarations, the objective (k-fold CV over the
shots, IM below 2 shots, never the test split), the study and its outputs, bad input."""

from __future__ import annotations

import csv
import re
import sqlite3

import optuna
import pytest
import torch
from bad_input import RUN_OPTION_MISTAKES, assert_one_sentence
from click.testing import CliRunner
from conftest import TINY_RUN

import imgxfer
from imgxfer.cli.app import cli
from imgxfer.components.adapters.linear import LinearProbe
from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.core.config import RunConfig, load
from imgxfer.plugin import testing, tunable
from imgxfer.sweep.tune import tune
from imgxfer.tasks.classify.stages.data import load_data

# The tiny run of tests/conftest.py with the fewest steps that still train something.
# (A flag given twice takes its last value.)
TINY = TINY_RUN + ["--adapter-steps", "4", "--generator", "none", "--encoder-steps", "10"]


def tiny_config(tmp_path, **changes) -> RunConfig:
    config = RunConfig(name="tiny", source="tiny-source", target="tiny-target", shots=3,
                       generator="none", encoder_steps=10, adapter_steps=4,
                       out=str(tmp_path / "out"))
    config.options["encoder"] = {"width": 4, "input_size": 16}
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tune_folder(out) -> list:
    return sorted(p for p in out.glob("*-tune-*") if p.is_dir())


def test_cv_scores_held_out_shots_and_never_reads_the_test_split(host, tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    _, split = load_data(config, host.registry)  # the split a run with this seed makes
    test_rows = {row.numpy().tobytes() for row in split.test.images[:]}
    known = {row.numpy().tobytes() for row in torch.cat([split.labelled.images[:],
                                                         split.unlabelled.images[:]])}
    seen: list[torch.Tensor] = []
    preprocess = SmallCNN.preprocess

    def spy(self, images):  # every image an encoder sees passes through here
        seen.append(images.detach().cpu())
        return preprocess(self, images)

    monkeypatch.setattr(SmallCNN, "preprocess", spy)
    result = tune(config, host.registry, n_trials=2, params=["adapter.lr"])
    assert result.objective.kind == "cv" and result.objective.folds == 3
    rows = {r.numpy().tobytes() for batch in seen for r in batch}
    assert not rows & test_rows, "a trial read test images"
    # unaugmented images seen (evaluation, AdaBN) are all shots or unlabelled images
    assert rows & known
    trials = result.study.study.trials
    assert [len(t.intermediate_values) for t in trials] == [3, 3]
    assert all(0 <= v <= 1 for t in trials for v in t.user_attrs["fold_accuracy"])


def test_one_shot_uses_the_im_score(host, tmp_path):
    result = tune(tiny_config(tmp_path, shots=1), host.registry, n_trials=2,
                  params=["adapter.lr", "adapter_steps"])
    assert result.objective.kind == "im"
    assert all(t.intermediate_values == {} for t in result.study.study.trials)
    summary = (result.folder / "summary.md").read_text()
    assert "IM score" in summary and "leave none to hold out" in summary


def test_cli_outputs_and_best_toml_reruns(host, tmp_path):
    out = tmp_path / "out"
    result = invoke("tune", *TINY, "--n-trials", "3", "--param", "adapter.lr",
                    "--param", "adapter.target_weight", "--out", str(out))
    assert result.exit_code == 0, result.output
    [folder] = tune_folder(out)
    names = {p.name for p in folder.iterdir()}
    assert {"best.toml", "trials.csv", "summary.md", "history.png", "study.db"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert len(rows) == 3 and rows[0]["state"] == "COMPLETE" and "adapter.lr" in rows[0]
    best = load(folder / "best.toml")
    assert set(best.options["adapter"]) == {"lr", "target_weight"}
    assert "| 0 (start) |" in (folder / "summary.md").read_text()  # the defaults, first
    rerun = invoke("run", "--config", str(folder / "best.toml"), "--out", str(tmp_path / "re"))
    assert rerun.exit_code == 0, rerun.output
    [run] = (tmp_path / "re").iterdir()
    assert load(run / "config.toml").options["adapter"] == best.options["adapter"]


def test_a_second_invocation_continues_the_study(host, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ["tune", *TINY, "--param", "adapter.lr", "--storage", url,
            "--study-name", "shared", "--out", str(tmp_path / "out")]
    assert invoke(*args, "--n-trials", "2").exit_code == 0
    second = invoke(*args, "--n-trials", "1")
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.trials) == 3
    assert sum(bool(t.user_attrs.get("start")) for t in study.trials) == 1  # enqueued once
    # each tune folder summarises the whole study
    last = tune_folder(tmp_path / "out")[-1]
    assert len(list(csv.DictReader((last / "trials.csv").open()))) == 3
    other = invoke(*args, "--n-trials", "1", "--seed", "5")
    assert other.exit_code == 2
    assert "was run with another config" in other.output
    assert len(tune_folder(tmp_path / "out")) == 2  # nothing written for the refusal


def test_a_pruner_that_prunes(host, tmp_path):
    # Any value is below 2, so the threshold pruner stops each trial at its first fold.
    result = tune(tiny_config(tmp_path), host.registry, n_trials=2, params=["adapter.lr"],
                  pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trials = result.study.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)
    assert result.best is None and not (result.folder / "best.toml").exists()
    assert "2 pruned" in (result.folder / "summary.md").read_text()


def test_median_pruner_is_the_default(host, tmp_path):
    result = tune(tiny_config(tmp_path), host.registry, n_trials=1, params=["adapter.lr"])
    assert isinstance(result.study.study.pruner, optuna.pruners.MedianPruner)


@pytest.mark.parametrize("args, needle", [
    (["--storage", "bogus-scheme://nowhere/x"], "--storage 'bogus-scheme://nowhere/x' cannot be opened"),
    (["--storage", "sqlite:////no/such/folder/study.db"], "cannot be opened"),
    (["--storage", "postgresql://me:secret@127.0.0.1:1/db"], "cannot be opened"),
    (["--n-trials", "0"], "--n-trials must be 1 or more, got 0."),
    (["--timeout", "soon"], "cannot read the duration 'soon'"),
    (["--timeout", "0"], "a time budget must be positive"),
    (["--param", "adapter.nope"], "--param adapter.nope: not tunable in this run; tunable here:"),
    (["--param", "adapter.synthetic_weight"], "tunable here: adapter_steps, adapter.lr"),
    (["--folds", "4"], "--folds must be between 2 and 3"),
    (["--shots", "1", "--folds", "2"], "--folds needs 2 or more labelled shots per class"),
    (["--compare", "linear,finetune"], "No such option"),
    *RUN_OPTION_MISTAKES,
])
def test_bad_input_is_one_sentence_and_writes_nothing(host, tmp_path, args, needle):
    out = tmp_path / "out"
    result = invoke("tune", *TINY, "--out", str(out), *args)
    assert_one_sentence(result, needle)
    assert "secret" not in result.output
    assert not out.exists() or not any(out.iterdir())


class Frozen(LinearProbe):
    """A linear probe that declares nothing tunable."""

    tunable: dict = {}


class BadDeclaration(LinearProbe):
    tunable = {"c": ("log", 0, 1)}


class Plugin:
    @imgxfer.hookimpl
    def register_adapters(self, register):
        register("frozen", Frozen)
        register("bad-declaration", BadDeclaration)


def test_components_without_or_with_broken_declarations(host, tmp_path):
    host.add(Plugin(), "declarations", version="0.0.1")
    out = tmp_path / "out"
    assert_one_sentence(invoke("tune", *TINY, "--adapter", "frozen", "--out", str(out)),
                  "nothing to tune: adapter 'frozen' declare")
    assert_one_sentence(invoke("tune", *TINY, "--adapter", "bad-declaration", "--out", str(out)),
                  "adapter 'bad-declaration' of plugin 'declarations' declares a bad range "
                  "for 'c'")
    assert not out.exists()
    with pytest.raises(AssertionError, match="low value must be above 0"):
        testing.check_tunable("adapters", BadDeclaration)


def test_declared_ranges_of_the_built_ins(host):
    registry = host.registry
    for kind in ("adapters", "generators"):
        for name in registry.names(kind):
            tunable.declared_ranges(registry.get(kind, name))  # well formed
    ranges = tunable.declared_ranges(registry.get("adapters", "self-training"))
    assert ranges["lr"].log and ranges["threshold"].values == (0.7, 0.99)
    space = tunable.available(RunConfig(generator="gan"), registry)
    assert {"synthetic_per_class", "generator.lr", "adapter.synthetic_weight"} <= set(space)
    assert "adapter.synthetic_weight" not in tunable.available(RunConfig(generator="none"),
                                                                registry)


@pytest.mark.parametrize("spec, reason", [
    (("log", 0.0, 1.0), "above 0"), (("float", 2.0, 1.0), "low < high"),
    (("int", 1.5, 3), "integer"), (("uniform", 0, 1), "scale from"), (("choice",), "choices"),
])
def test_malformed_ranges(spec, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        tunable.parse_range(spec)


def test_with_a_generator_each_fold_synthesises_from_its_own_shots(host, tmp_path, monkeypatch):
    from imgxfer.sweep import tune as tuning

    made = []
    original = tuning.make_synthetic

    def spy(plan, registry):
        made.append(len(plan.split.labelled))
        return original(plan, registry)

    monkeypatch.setattr(tuning, "make_synthetic", spy)
    config = tiny_config(tmp_path, generator="gan", generator_steps=2, synthetic_per_class=2)
    config.options["generator"] = {"width": 8, "image_size": 16}
    result = tune(config, host.registry, n_trials=2, params=["adapter.synthetic_weight"])
    assert len(result.study.study.trials) == 2
    # one generator per fold, trained on the fold's 2 shots per class, reused by trial 2
    assert made == [6, 6, 6]
    con = sqlite3.connect(str(result.folder / "study.db"))
    assert con.execute("select count(*) from trials").fetchone() == (2,)


def test_a_given_storage_is_not_written_when_the_input_is_bad(host, tmp_path):
    db = tmp_path / "shared.db"
    result = invoke("tune", *TINY, "--storage", f"sqlite:///{db}", "--folds", "4",
                    "--out", str(tmp_path / "out"))
    assert_one_sentence(result, "--folds must be between 2 and 3")
    assert not db.exists() and not (tmp_path / "out").exists()


def test_a_trial_killed_mid_run_is_failed_when_the_study_is_continued(tmp_path, monkeypatch):
    """Issue 29, item 16: a trial whose process died (its heartbeat stopped) does not stay
    RUNNING: continuing the study fails it once the grace period has passed."""
    import time

    from imgxfer.sweep import tune as tuning

    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 1)
    url, config = f"sqlite:///{tmp_path / 'study.db'}", tiny_config(tmp_path)
    study = tuning.open_study(url, "killed", config).study
    killed = study.ask()  # what a trial looks like when `kill -9` stops its process
    study._storage.record_heartbeat(killed._trial_id)
    time.sleep(2.5)
    again = tuning.open_study(url, "killed", config).study
    assert again.trials[0].state == optuna.trial.TrialState.FAIL


def test_unfinished_trials_are_no_results(tmp_path):
    """summary.md and trials.csv count only trials that ended: a RUNNING one (another
    worker's, or killed within the grace period) is said apart, with no empty row."""
    from imgxfer.sweep.tune_report import summary, trials_csv

    study = optuna.create_study(direction="maximize")
    done = study.ask()
    done.suggest_float("adapter.lr", 1e-3, 1e-1, log=True)
    study.tell(done, 0.5)
    study.ask().suggest_float("adapter.lr", 1e-3, 1e-1, log=True)  # left running
    rows = list(csv.DictReader(trials_csv(study).splitlines()))
    assert [(r["number"], r["state"], r["value"]) for r in rows] == [("0", "COMPLETE", "0.5")]
    text = summary(study, "sqlite:///x.db")
    assert "- trials: 1 complete\n" in text and "running" not in text.split("\n- 1 unfinished")[0]
    assert "- 1 unfinished trial(s) left out (running elsewhere, or stopped" in text
    assert "| 1 |" not in text  # the running trial has no row in the table


def test_a_study_starts_from_the_runs_own_augmentation(host):
    """The run-wide policy reaches the adapter (Registry.build), so it is where a study
    starts; style, which auto chooses for a grey source and a colour target, joins the
    choices only in such runs (a study made before it keeps its choices)."""
    registry = host.registry
    space = tunable.available(RunConfig(), registry)
    assert "style" not in space["adapter.augment"].values
    styled = tunable.with_run_policy(space, "style")
    assert styled["adapter.augment"].values[-1] == "style"
    assert tunable.with_run_policy(space, "") == tunable.with_run_policy(space, "light") == space
    names = ["adapter.augment"]
    assert tunable.current_values(RunConfig(augment="style"), registry, names) == {
        "adapter.augment": "style"}
    assert tunable.current_values(RunConfig(augment=""), registry, names) == {
        "adapter.augment": "light"}  # finetune's own default
    given = RunConfig(augment="style")
    given.options["adapter"] = {"augment": "none"}  # the adapter's own option wins
    assert tunable.current_values(given, registry, names) == {"adapter.augment": "none"}


def test_a_study_key_is_unchanged_where_auto_keeps_each_components_policy():
    """Studies made before --augment auto (augment = "") continue on grey-to-grey data."""
    from imgxfer.core.config import resolve_augment
    from imgxfer.sweep.tune import study_key

    before = RunConfig(augment="")
    resolved = resolve_augment(RunConfig(), 1, 1)
    assert resolved.augment_reason  # recorded in config.toml, but not part of the key
    assert study_key(RunConfig(augment=resolved.augment)) == study_key(before)
    assert study_key(resolved) == study_key(before)
