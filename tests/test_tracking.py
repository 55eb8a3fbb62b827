"""Experiment tracking (`--tracker tensorboard|mlflow`, issue 28): every training loop's
numbers by step, the final metrics, the config as hyper-parameters and MLflow's artifacts,
read back with TensorBoard's EventAccumulator and MLflow's MlflowClient; one tracker run
per trial of `imgxfer tune`; and the sentences for a tracker that cannot be used."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import optuna
import pytest
from bad_input import assert_one_sentence
from click.testing import CliRunner
from conftest import TINY_RUN, FakePlugin
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from imgxfer import tasks
from imgxfer.cli.app import cli
from imgxfer.core.config import RunConfig
from imgxfer.core.errors import UserError
from imgxfer.plugin import host as plugins
from imgxfer.run import tracking
from imgxfer.run.trackers import _fresh


class Recording:
    """A progress that keeps what every loop reported: (description, step, name, value)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str, float]] = []

    @contextmanager
    def task(self, description, total):
        recording = self

        class Task:
            step = 0

            def advance(self, n=1, **info):
                self.step += n
                recording.seen += [(description, self.step, k, v) for k, v in info.items()
                                   if isinstance(v, float)]

        yield Task()

    def log(self, message):
        pass

    def series(self) -> dict[str, list[tuple[int, float]]]:
        """What a tracker should hold: tag -> [(step, value)]."""
        out: dict[str, list[tuple[int, float]]] = {}
        for description, step, name, value in self.seen:
            out.setdefault(f"{tracking.tag(description)}/{name}", []).append((step, value))
        return out


@contextmanager
def fake_host():
    host = plugins.PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    host.add(FakePlugin(), "fake")
    plugins._HOST = host
    try:
        yield host
    finally:
        plugins.reset_host()


def tiny(out: Path, **changes) -> RunConfig:
    config = RunConfig(name="tiny", source="tiny-source", target="tiny-target", shots=3,
                       generator="none", encoder_steps=8, adapter_steps=6, quality=False,
                       compare_synthetic=False, synthetic_per_class=4, out=str(out))
    config.options["encoder"] = {"width": 4, "input_size": 16}
    config.options["generator"] = {"width": 8, "image_size": 16}
    if changes.get("task", "classify") != "classify":  # scenes have their own size
        config.options["encoder"] = {"width": 4}
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def tracked_run(out: Path, **changes):
    recording = Recording()
    with fake_host() as host:
        result = tasks.run(tiny(out, **changes), host.registry, progress=recording)
    return result, recording


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


# --- the pieces, without a backend ---------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("adapter: finetune (with synthetic)", "adapter/finetune_with_synthetic"),
    ("encoder: pretrain on source", "encoder/pretrain_on_source"),
    ("segment model: train on source", "segment_model/train_on_source"),
    ("timings_s/adapter:clip:/models/x (no synthetic)", "timings_s/adapter/clip/models/x_no_synthetic"),
    ("../..", "value"),
])
def test_names_suit_both_trackers(text, expected):
    assert tracking.tag(text) == expected


def test_the_config_as_hyperparameters():
    config = tiny(Path("runs"), compare=["linear", "finetune"], tracker="mlflow",
                  tracker_uri="https://me:secret@mlflow.example.org")
    config.options["adapter"] = {"lr": 0.01}
    params = tracking.hyperparameters(config)
    assert params["adapter"] == "finetune" and params["adapter.lr"] == 0.01
    assert params["encoder.width"] == 4 and params["compare"] == "linear,finetune"
    assert params["quality"] is False and params["tracker"] == "mlflow"
    assert params["tracker_uri"] == "https://me:***@mlflow.example.org"
    assert "provenance" not in params and "options" not in params


def test_final_metrics_are_the_numbers_of_metrics_json():
    metrics = {"seed": 0, "target": {"accuracy": 0.5, "per_class": [{"f1": 1.0}], "ok": True},
               "timings_s": {"adapter:finetune (no synthetic)": 2}, "note": "text"}
    assert tracking.final_metrics(metrics) == {
        "seed": 0.0, "target/accuracy": 0.5, "timings_s/adapter/finetune_no_synthetic": 2.0}


class FakeSink:
    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def __getattr__(self, method):
        def call(*args):
            if method == self.fail_on:
                raise ConnectionError("server gone")
            self.calls.append((method, *args))
        return call


class FakeTracker:
    kind = "fake"

    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink

    def start(self, name, default_dir, tags):
        return self.sink


def test_tracked_progress_logs_numbers_at_each_tasks_own_step():
    sink = FakeSink()
    run = tracking.TrackedRun(sink, "fake")
    progress = run.progress(Recording())
    with progress.task("generator: gan", 10) as task:
        task.advance(4)  # a resumed loop: its earlier steps, with nothing to log
        task.advance(1, d_loss=0.5, g_loss=1.0, shown="text")
    for _ in range(2):  # the same description again gets a name of its own
        with progress.task("adapter: finetune", 2) as task:
            task.advance(1, loss=2.0)
    assert sink.calls == [
        ("scalars", {"generator/gan/d_loss": 0.5, "generator/gan/g_loss": 1.0}, 5),
        ("scalars", {"adapter/finetune/loss": 2.0}, 1),
        ("scalars", {"adapter/finetune_2/loss": 2.0}, 1)]


@pytest.mark.parametrize("error, status", [
    (None, "FINISHED"), (ValueError, "FAILED"), (KeyboardInterrupt, "KILLED"),
    (optuna.TrialPruned, "KILLED")])
def test_a_tracker_run_ends_with_the_runs_status(tmp_path, error, status):
    sink = FakeSink()
    with pytest.raises(error) if error else nullcontext():
        with tracking.tracked(FakeTracker(sink), "run", tmp_path, {"seed": 0},
                              stopped=(optuna.TrialPruned,)):
            if error:
                raise error()
    assert sink.calls[0] == ("params", {"seed": 0}) and sink.calls[-1] == ("close", status)


def test_a_failing_tracker_costs_the_tracking_not_the_run(tmp_path, caplog):
    sink = FakeSink(fail_on="scalars")
    with caplog.at_level(logging.WARNING, logger="imgxfer"):
        with tracking.tracked(FakeTracker(sink), "run", tmp_path, {}) as run:
            run.scalars({"a": 1.0}, 1)
            run.scalars({"a": 2.0}, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "--tracker fake stopped logging this run: server gone"]
    assert sink.calls == [("params", {})]  # nothing after the failure, not even close


def test_a_tracker_that_cannot_start_a_run_leaves_the_run_alone(tmp_path, caplog):
    class Broken(FakeTracker):
        def start(self, name, default_dir, tags):
            raise ConnectionError("refused")

    with caplog.at_level(logging.WARNING, logger="imgxfer"):
        with tracking.tracked(Broken(FakeSink()), "run", tmp_path, {}) as run:
            assert run.progress(progress := Recording()) is progress
    assert "could not start a run, so this one is not logged: refused" in caplog.text


def test_a_resumed_run_gets_its_own_tensorboard_folder(tmp_path):
    assert _fresh(tmp_path) == tmp_path
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    assert _fresh(tmp_path) == tmp_path / "resumed-1"
    (tmp_path / "resumed-1").mkdir()
    assert _fresh(tmp_path) == tmp_path / "resumed-2"


def test_other_processes_of_a_distributed_run_log_nothing(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert tracking.open_tracker(tiny(Path("runs"), tracker="mlflow")) is None


# --- TensorBoard ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    """A tiny run whose generator translates (so encoder, translator and adapter train)."""
    result, recording = tracked_run(tmp_path_factory.mktemp("tb"), tracker="tensorboard",
                                    generator="gan", synthesis="translate", generator_steps=3)
    return result.folder, recording


def test_tensorboard_holds_every_loops_numbers_by_step(tensorboard_run):
    folder, recording = tensorboard_run
    board = events(folder / "tensorboard")
    expected = recording.series()
    assert {"encoder/pretrain_on_source/loss", "generator/gan_translate/g_loss",
            "generator/gan_translate/d_loss", "generator/gan_translate/content_loss",
            "adapter/finetune/loss"} <= set(expected)
    assert [s for s, _ in expected["encoder/pretrain_on_source/loss"]] == list(range(1, 9))
    assert len(expected["generator/gan_translate/g_loss"]) == 3
    assert len(expected["adapter/finetune/loss"]) == 6
    for name, points in expected.items():
        logged = [(e.step, e.value) for e in board.Scalars(name)]
        assert [s for s, _ in logged] == [s for s, _ in points], name
        # TensorBoard stores float32: each value is the loop's, to that precision.
        np.testing.assert_array_equal([v for _, v in logged],
                                      np.float32([v for _, v in points]), err_msg=name)


def test_tensorboard_holds_the_final_metrics_and_the_config(tensorboard_run):
    folder, _ = tensorboard_run
    board = events(folder / "tensorboard")
    metrics = json.loads((folder / "metrics.json").read_text())
    for name, value in [("target/accuracy", metrics["target"]["accuracy"]),
                        ("adapters/finetune/macro_f1", metrics["adapters"]["finetune"]["macro_f1"]),
                        ("generator/steps", 3)]:
        [event] = board.Scalars(name)
        assert event.value == pytest.approx(value, rel=1e-6)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        board.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["adapter"].string_value == "finetune"
    assert start.hparams["synthesis"].string_value == "translate"
    assert start.hparams["encoder.width"].number_value == 4
    assert start.hparams["adapter_steps"].number_value == 6
    assert {"config/text_summary", "status/text_summary"} <= set(board.Tags()["tensors"])
    assert 'tracker = "tensorboard"' in (folder / "config.toml").read_text()


def test_tensorboard_logs_the_dense_models_too(tmp_path):
    result, recording = tracked_run(
        tmp_path, tracker="tensorboard", tracker_uri=str(tmp_path / "boards"), task="segment",
        source="tiny-scenes", target="tiny-scenes-inverted", shots=2, encoder_steps=3,
        adapter_steps=2, adapter="advent")
    board = events(tmp_path / "boards" / result.folder.name)  # --tracker-uri: a folder
    expected = recording.series()
    assert {"segment_model/train_on_source/loss", "adapter/advent/loss",
            "adapter/advent/entropy", "adapter/advent/domain"} <= set(expected)
    for name, points in expected.items():
        assert [(e.step, e.value) for e in board.Scalars(name)] == [
            (s, pytest.approx(v, rel=1e-6)) for s, v in points], name
    assert not (result.folder / "tensorboard").exists()


# --- MLflow -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    """A tiny run into MLflow's default store: sqlite in --out."""
    out = tmp_path_factory.mktemp("ml")
    result, recording = tracked_run(out, tracker="mlflow")
    return out, result.folder, recording


def test_mlflow_holds_losses_final_metrics_params_and_artifacts(mlflow_run, tmp_path):
    out, folder, recording = mlflow_run
    assert {p.name for p in out.iterdir()} == {folder.name, "mlflow.db", "mlartifacts"}
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == folder.name
    assert run.data.tags["imgxfer.folder"] == str(folder.resolve())
    expected = recording.series()
    assert {"encoder/pretrain_on_source/loss", "adapter/finetune/loss"} <= set(expected)
    for name, points in expected.items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert logged == points, name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert run.data.metrics["target/accuracy"] == metrics["target"]["accuracy"]
    assert run.data.metrics["encoder/source_val_accuracy"] == (
        metrics["encoder"]["source_val_accuracy"])
    params = run.data.params
    assert params["adapter"] == "finetune" and params["encoder.width"] == "4"
    assert params["adapter_steps"] == "6" and params["tracker"] == "mlflow"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "report.html", "samples.png", "config.toml"} <= names
    copy = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert Path(copy).read_bytes() == (folder / "metrics.json").read_bytes()


def test_tune_logs_one_mlflow_run_per_trial(mlflow_run, tmp_path):
    store = f"sqlite:///{mlflow_run[0] / 'mlflow.db'}"  # any tracking URI: the same store
    with fake_host():
        result = CliRunner().invoke(cli, [
            "tune", *TINY_RUN, "--adapter-steps", "3", "--generator", "none",
            "--encoder-steps", "8", "--name", "tuned", "--n-trials", "2",
            "--param", "adapter.lr", "--out", str(tmp_path), "--tracker", "mlflow",
            "--tracker-uri", store])
    assert result.exit_code == 0, result.output
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    trials = list(csv.DictReader((folder / "trials.csv").open()))
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("tuned").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"{folder.name}/trial-0",
                                                    f"{folder.name}/trial-1"]
    study = optuna.load_study(study_name="tuned", storage=f"sqlite:///{folder / 'study.db'}")
    assert len(trials) == len(study.trials) == 2
    for run in runs:
        trial = study.trials[int(run.data.params["trial"])]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["adapter.lr"]) == trial.params["adapter.lr"]
        assert run.data.metrics["trial/objective"] == pytest.approx(trial.value)
        folds = client.get_metric_history(run.info.run_id, "trial/fold_accuracy")
        assert [m.step for m in sorted(folds, key=lambda m: m.step)] == [1, 2, 3]
        losses = client.get_metric_history(run.info.run_id, "adapter/finetune_fold_1/loss")
        assert sorted(m.step for m in losses) == [1, 2, 3]
    # Artifacts beside the SQLite file, not in ./mlruns wherever the command ran.
    assert client.get_experiment_by_name("tuned").artifact_location == (
        (mlflow_run[0] / "mlartifacts").resolve().as_uri())


# --- what cannot be used ----------------------------------------------------------------

@pytest.mark.parametrize("kind, module, package", [
    ("mlflow", "mlflow", "mlflow-skinny"), ("tensorboard", "torch.utils.tensorboard",
                                            "tensorboard")])
def test_a_missing_package_is_one_sentence_and_writes_nothing(tmp_path, monkeypatch, kind,
                                                              module, package):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with fake_host():
        result = CliRunner().invoke(cli, ["run", *TINY_RUN, "--generator", "none",
                                          "--tracker", kind, "--out", str(tmp_path / "out")])
    assert_one_sentence(result, f"--tracker {kind} needs the {package} package; install it "
                                "with pip install 'imgxfer[track]'.")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, uri, message", [
    ("mlflow", "mlruns", "is a folder path, which MLflow no longer opens as a store by default"),
    ("mlflow", "bogus-scheme://nowhere", "'bogus-scheme://nowhere' is not a kind of URI MLflow "
                                         "opens; give e.g. sqlite:///mlflow.db"),
    ("mlflow", "postgresql://me:secret@127.0.0.1:1/db", "'postgresql://me:***@127.0.0.1:1/db'"),
    ("tensorboard", "FILE", "is a file; give a folder for TensorBoard's event files."),
    # No server there: one try, not MLflow's four minutes of retries.
    ("mlflow", "http://127.0.0.1:1", "'http://127.0.0.1:1': no MLflow server answered there "
                                     "(connection refused); check the address"),
])
def test_a_location_that_cannot_be_opened_is_one_sentence(tmp_path, kind, uri, message):
    if uri == "FILE":
        uri = str(tmp_path / "file.txt")
        Path(uri).write_text("keep me")
    environment = dict(os.environ)
    with pytest.raises(UserError) as caught:
        tracking.open_tracker(tiny(tmp_path / "out", tracker=kind, tracker_uri=uri))
    assert message in str(caught.value) and "secret" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert dict(os.environ) == environment  # MLflow's retries are cut short while opening only


@pytest.mark.parametrize("kind, uri, says", [
    ("tensorboard", "", "logged to TensorBoard: tensorboard --logdir {out}"),
    ("tensorboard", "tb", "logged to TensorBoard: tensorboard --logdir tb"),
    ("mlflow", "", "logged to MLflow (experiment 'tiny'): mlflow ui --backend-store-uri "
                   "sqlite:///{out}/mlflow.db"),
    ("mlflow", "http://me:secret@host:5000", "(experiment 'tiny'): open http://me:***@host:5000"),
    ("none", "", ""),
])
def test_a_run_says_where_its_tracker_logged(tmp_path, kind, uri, says):
    from rich.console import Console

    from imgxfer.cli import app

    out = (tmp_path / "out").resolve()
    screen = Console(record=True, width=200)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app, "err", screen)
        app._print_tracker(tiny(out, tracker=kind, tracker_uri=uri))
    shown = screen.export_text()
    assert says.format(out=out) in shown and "secret" not in shown
    assert bool(shown) == bool(says)
