"""The run folder: the name of every file in it (docs/architecture.md, "The run folder"),
a fresh, uniquely named directory per run, and atomic file writes."""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from imgxfer.core import distributed
from imgxfer.core.errors import UserError

# mkstemp creates files readable by the owner only; run files should follow the umask
# like any file the user writes. Reading the umask means setting it, so do it once.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


CONFIG = "config.toml"
LOG = "run.log"
# Written last: its presence marks a finished run (--resume refuses those).
METRICS = "metrics.json"
# Written instead of metrics.json when a run stops on an error (the error's type and
# message; run.log has the traceback).
FAILED = "failed.json"
REPORT = "report.html"
# TensorBoard's event files of the run (--tracker tensorboard without --tracker-uri).
TENSORBOARD = "tensorboard"
CAPTIONS = "captions.jsonl"
SAMPLES = "samples.png"
# Class-activation maps of a few target test images under each adapter (the report's
# explanations section; metrics.json's ``explanations`` describes them).
EXPLANATIONS = "explanations.png"
# A dense run's test scenes with true and predicted masks or boxes (imgxfer.tasks.dense.report).
PREDICTIONS = "predictions.png"
GENERATOR = "generator.safetensors"
# The generator's training checkpoint: written while it trains (when the generator
# supports checkpoints), read by ``imgxfer run --resume``, removed once the run has
# finished (GENERATOR then holds the trained generator).
TRAINING_CHECKPOINT = "generator-train.safetensors"
CLASSIFIER_GLOB = "classifier*.safetensors"
# `--seeds`: one run folder per seed under a parent holding SUMMARY.
SUMMARY = "summary.json"


def seed_folder(seed: int | str) -> str:
    return f"seed-{seed}"


def classifier_file(adapter: str, several: bool) -> str:
    """``classifier.safetensors``, or ``classifier-<adapter>.safetensors`` in a run that
    compares several adapters."""
    return f"classifier-{adapter.replace('/', '_')}.safetensors" if several else (
        "classifier.safetensors")

# Files that make a folder a run folder (summary.json: the parent of a --seeds run).
RUN_FOLDER_FILES = (CONFIG, METRICS, SUMMARY)


def check_out_dir(out: str | Path, *, probe: bool = True) -> Path:
    """The parent of all run folders: a directory, or one that can be created, where the
    user can write (``probe``: tried with a temporary folder), and not itself a run
    folder. Checked before anything is written."""
    out = Path(out)
    try:
        existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
        if existing == out and not out.is_dir():
            raise UserError(f"--out {str(out)!r} is a file; give a directory for run folders.")
        if not existing.is_dir():
            raise UserError(f"--out {str(out)!r} lies under {str(existing)!r}, which is a file.")
        if existing == out:
            _refuse_run_folder(out)
    except PermissionError:  # a folder on the way that cannot be searched
        raise UserError(f"--out {str(out)!r} cannot be reached (permission denied); give a "
                        "folder you can write to.") from None
    if probe:
        _check_writable(out, existing)
    return out


def _refuse_run_folder(out: Path) -> None:
    """Run folders go beside each other: one nested in an earlier run's folder would
    hide in it (and --resume would no longer find that run's own files)."""
    marker = next((name for name in RUN_FOLDER_FILES if (out / name).is_file()), None)
    if marker is None:
        return
    unfinished = marker == CONFIG and not (out / METRICS).is_file()
    resume = f", or finish that run with --resume {out}" if unfinished else ""
    raise UserError(f"--out {str(out)!r} is an earlier run's folder (it holds {marker}); give "
                    f"the folder that holds run folders, e.g. {str(out.parent)!r}{resume}.")


def _check_writable(out: Path, existing: Path) -> None:
    """Create and remove a folder in ``existing`` (``out`` or its nearest existing
    parent): permissions, read-only disks and folders such as /proc all fail here, in one
    sentence, before the run starts (os.access says yes to root for all of them)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".imgxfer-write-test-", dir=existing))
    except OSError as error:
        raise _unwritable(out, existing, error) from None


def _unwritable(out: Path, where: Path, error: OSError) -> UserError:
    return UserError(f"--out {str(out)!r} cannot be written: creating a folder in "
                     f"{str(where)!r} failed ({error.strerror or type(error).__name__}); give "
                     "a folder you can write to.")


def create_run_dir(out: str | Path, name: str) -> Path:
    """``out/<YYYYmmdd-HHMMSS>-<name>``; never reuses an existing folder. Its own mkdir
    says when ``out`` cannot be written, so the write probe is not repeated here. In a
    distributed run only the main process creates it; the others get a private
    temporary folder (imgxfer.core.distributed)."""
    if not distributed.is_main():
        return distributed.private_folder()
    out = check_out_dir(out, probe=False)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(out, out, error) from None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = out / (f"{stamp}-{slug}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as error:
            raise _unwritable(out, out, error) from None
    raise UserError(f"could not create a new run folder in {str(out)!r}.")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over, so a reader (or an
    interrupted run) never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# Metadata key of the content checksum atomic_save_tensors writes: safetensors checks
# its header, not the tensor bytes, so flipped bytes in the data would load silently.
CHECKSUM = "sha256"


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of CPU tensors, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # the buffer itself, no copy (numpy's stubs give ndarray __buffer__ only on 3.12+)
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    return h.hexdigest()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file without reading its tensors; ``{}`` for a file
    that cannot be read (:func:`read_tensors` says why in one sentence when it is used)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # safetensors raises several types for damaged files
        return {}


def read_tensors(path: str | Path, *, what: str = "file", remedy: str = ""
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a missing, truncated or corrupt file is
    a :class:`UserError` (never an unpickling: safetensors holds tensors only), and so is
    one whose tensors no longer match the checksum saved with them. ``what`` names the
    file in messages, ``remedy`` ends the one for a damaged file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"the {what} {str(path)!r} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises several types for damaged files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"the {what} {str(path)!r} cannot be read: it is truncated, corrupt "
                        f"or not a safetensors file ({reason}){remedy}.") from None
    if CHECKSUM in metadata and tensors_checksum(tensors) != metadata[CHECKSUM]:
        raise UserError(f"the {what} {str(path)!r} is damaged: its tensors do not match the "
                        f"checksum saved with them{remedy}.")
    return tensors, metadata


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically; tensors are made contiguous CPU copies, and
    the metadata gets their checksum (checked by :func:`read_tensors`)."""
    path = Path(path)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {**(metadata or {}), CHECKSUM: tensors_checksum(clean)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=metadata)
        # After save_file, which writes a new file in mkstemp's place (owner-only again).
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as f:  # on disk before the rename, as atomic_write_bytes does
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
