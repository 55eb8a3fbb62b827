"""The backends of ``--tracker`` (:mod:`imgxfer.run.tracking`): TensorBoard through
torch's ``SummaryWriter`` and MLflow through ``MlflowClient``. Imported only when a
tracker is asked for; both packages come with the ``track`` extra.

The libraries are used directly rather than through Accelerate's trackers: those log
through MLflow's process-global active run and one Accelerator, while imgxfer opens a
tracker run per run folder and per tuning trial, one after another in one process, and
must end each with its own status. MLflow comes as ``mlflow-skinny``: the client and
its SQL store are all a run writes through (the full ``mlflow`` package adds the server
and UI, which only reading the results needs)."""

from __future__ import annotations

import importlib
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgxfer.core.config import RunConfig
from imgxfer.core.errors import UserError, one_line
from imgxfer.run.markdown import table

if TYPE_CHECKING:  # imgxfer.run.tracking imports this module when a tracker is asked for
    from imgxfer.run.tracking import Scalar, Sink, Tracker

INSTALL = "pip install 'imgxfer[track]'"
# The default MLflow store, in the folder that receives run folders (--out): one SQLite
# file for all runs, so `mlflow ui` compares them; their artifacts go beside it.
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
# MLflow's limits per call (log_batch) and per value.
MAX_METRICS, MAX_PARAMS, MAX_PARAM_VALUE, MAX_KEY = 1000, 100, 6000, 250
FLUSH_SECONDS = 10  # buffered MLflow metrics reach the store at least this often


def open_backend(kind: str, uri: str, config: RunConfig) -> Tracker:
    if kind == "tensorboard":
        return TensorBoard.open(uri)
    return MLflow.open(uri, config)


def _require(kind: str, package: str, module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(f"--tracker {kind} needs the {package} package; install it with "
                        f"{INSTALL}.") from None


def shown_uri(uri: str) -> str:
    """``uri`` with any password replaced, for messages."""
    return re.sub(r"(//[^/@:]+):[^/@]*@", r"\1:***@", uri)


@dataclass
class TensorBoard:
    """Event files for `tensorboard --logdir`: each run in its own folder, under ``root``
    when given (``root/<run name>``), else inside the run folder (RUN/tensorboard)."""

    root: Path | None
    kind: str = "tensorboard"

    @classmethod
    def open(cls, uri: str) -> TensorBoard:
        _require("tensorboard", "tensorboard", "torch.utils.tensorboard")
        if not uri:
            return cls(None)
        root = Path(uri).expanduser()
        if root.exists() and not root.is_dir():
            raise UserError(f"--tracker-uri {uri!r} is a file; give a folder for "
                            "TensorBoard's event files.")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--tracker-uri {uri!r} cannot be created: "
                            f"{one_line(error).rstrip('.')}.") from None
        return cls(root)

    def start(self, name: str, default_dir: Path, tags: Mapping[str, str]) -> Sink:
        return TensorBoardRun(_fresh(self.root / name if self.root else default_dir), tags)


def _fresh(folder: Path) -> Path:
    """``folder``, or a ``resumed-K`` folder inside it when it holds a run's events
    already (a resumed run): two runs' steps in one folder would draw as one line."""
    if not any(folder.glob("events.out.tfevents.*")):
        return folder
    k = 1
    while (folder / f"resumed-{k}").exists():
        k += 1
    return folder / f"resumed-{k}"


class TensorBoardRun:
    def __init__(self, log_dir: Path, tags: Mapping[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=FLUSH_SECONDS)
        if tags:
            self.writer.add_text("run", table(["key", "value"], tags.items()))

    def params(self, values: Mapping[str, Scalar]) -> None:
        """The HParams dashboard's session start (no experiment summary: TensorBoard then
        builds one from every run under --logdir, whatever keys each has) and a table."""
        from torch.utils.tensorboard.summary import hparams

        _, start, _ = hparams(dict(values), {})  # type: ignore[no-untyped-call]
        events = self.writer.file_writer
        assert events is not None  # SummaryWriter opens it in __init__
        events.add_summary(start)
        self.writer.add_text("config", table(["key", "value"], values.items()))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def artifacts(self, paths: Sequence[Path]) -> None:
        pass  # the run folder holds them; TensorBoard shows scalars, text and images

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


@contextmanager
def _quiet() -> Iterator[None]:
    """MLflow and Alembic announce each table they create, and SQLAlchemy warns about
    MLflow's mappers: no business of a user of `imgxfer run`."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@dataclass
class MLflow:
    """Runs in the experiment named after the run (``config.name``) of the tracking
    store ``uri``: any URI MLflow takes; by default an SQLite file in --out."""

    client: Any  # mlflow.tracking.MlflowClient
    experiment_id: str
    uri: str
    kind: str = "mlflow"

    @staticmethod
    def default_uri(out: str) -> str:
        """The store a run under ``out`` logs to without --tracker-uri."""
        return f"sqlite:///{Path(out).expanduser().resolve() / MLFLOW_DB}"

    @classmethod
    def open(cls, uri: str, config: RunConfig) -> MLflow:
        _require("mlflow", "mlflow-skinny", "mlflow")
        if not uri:
            Path(config.out).expanduser().mkdir(parents=True, exist_ok=True)
            uri = cls.default_uri(config.out)
        with _quiet(), _fail_fast():
            from mlflow.tracking import MlflowClient

            try:
                client = MlflowClient(tracking_uri=uri)
                experiment = _experiment(client, config.name, _artifact_root(uri))
            except UserError:
                raise
            except Exception as error:  # MLflow, SQLAlchemy and HTTP raise many types
                raise UserError(_cannot_open(uri, error)) from None
        return cls(client, experiment, uri)

    def start(self, name: str, default_dir: Path, tags: Mapping[str, str]) -> Sink:
        with _quiet():
            return MLflowRun(self.client, self.experiment_id, name, tags)


# While the store is opened, before the run starts: one try of at most this many seconds
# per request. MLflow's own default retries a server that does not answer for about four
# minutes, a long wait for a mistyped --tracker-uri. (A variable the user set is kept.)
OPEN_RETRIES, OPEN_TIMEOUT_S = "0", "20"


@contextmanager
def _fail_fast() -> Iterator[None]:
    """MLflow's HTTP retries and timeout cut short (it reads them at each request)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": OPEN_RETRIES,
             "MLFLOW_HTTP_REQUEST_TIMEOUT": OPEN_TIMEOUT_S}
    unset = [name for name in names if name not in os.environ]
    os.environ.update({name: names[name] for name in unset})
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


def _experiment(client: Any, name: str, artifacts: str | None) -> str:
    """The id of experiment ``name``, created when missing (by a process beside this one,
    perhaps, at the same moment: then its)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name, artifact_location=artifacts))
        except Exception:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise UserError(f"the MLflow experiment {name!r} was deleted; restore it (mlflow "
                        "experiments restore) or give the run another --name.")
    return str(found.experiment_id)


def _artifact_root(uri: str) -> str | None:
    """Beside an SQLite store, a folder for its artifacts; MLflow's own default is
    ./mlruns in whatever folder the command ran from. Other stores keep their default."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return (Path(database).expanduser().resolve().parent / MLFLOW_ARTIFACTS).as_uri()


def _cannot_open(uri: str, error: Exception) -> str:
    text = one_line(error)
    if "MLFLOW_ALLOW_FILE_STORE" in str(error):  # MLflow 3 refuses folders as stores
        return (f"--tracker-uri {shown_uri(uri)!r} is a folder path, which MLflow no longer opens "
                "as a store by default; give a database such as sqlite:///mlflow.db, or set "
                "MLFLOW_ALLOW_FILE_STORE=true.")
    if "Max retries exceeded" in str(error) or "timed out" in str(error):  # HTTP, no answer
        reason = re.search(r"\[Errno -?\d+\] ([^\"')]+)|(\w+ timed out)", str(error))
        why = f" ({(reason.group(1) or reason.group(2)).strip().lower()})" if reason else ""
        return (f"--tracker-uri {shown_uri(uri)!r}: no MLflow server answered there{why}; "
                "check the address, or start the server (mlflow server).")
    if "unsupported URI" in str(error):  # MLflow words it as its model registry's problem
        return (f"--tracker-uri {shown_uri(uri)!r} is not a kind of URI MLflow opens; give "
                "e.g. sqlite:///mlflow.db, http://host:5000 or postgresql://user@host/db.")
    first = re.split(r"(?<=[a-z)'\]])\. ", text, maxsplit=1)[0].rstrip(".")
    return f"--tracker-uri {shown_uri(uri)!r} cannot be opened by MLflow: {first}."


def _key(name: str) -> str:
    return re.sub(r"[^\w.\-/ ]", "_", name)[:MAX_KEY]


class MLflowRun:
    """One MLflow run. Metrics are buffered and sent in batches (one call per step would
    cost the store a transaction each)."""

    def __init__(self, client: Any, experiment_id: str, name: str,
                 tags: Mapping[str, str]) -> None:
        self.client = client
        self.run_id: str = client.create_run(experiment_id, run_name=name,
                                             tags=dict(tags)).info.run_id
        self.pending: list[Any] = []
        self.flushed = time.monotonic()

    def params(self, values: Mapping[str, Scalar]) -> None:
        from mlflow.entities import Param

        items = [Param(_key(k), str(v)[:MAX_PARAM_VALUE]) for k, v in values.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS])

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(_key(k), v, now, step) for k, v in values.items()]
        if len(self.pending) >= MAX_METRICS or time.monotonic() - self.flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_METRICS], self.pending[MAX_METRICS:]
            self.client.log_batch(self.run_id, metrics=batch)
        self.flushed = time.monotonic()

    def artifacts(self, paths: Sequence[Path]) -> None:
        self.flush()
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)
