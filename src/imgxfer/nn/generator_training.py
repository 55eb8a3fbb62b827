"""Helpers for generators that train in the run and resume from a checkpoint: a
fingerprint of the data (a resumed run must see the same data), the differences between
two fingerprints in words, and the per-image draw weights that give the few target images
their share of each batch. The built-in GAN and the diffusers plugin's ``diffusion``
generator use them, so both resume under the same rules; plugin authors may too."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgxfer.core import distributed
from imgxfer.core.budget import Budget
from imgxfer.core.progress import Progress
from imgxfer.data.dataset import GeneratorData

# A training checkpoint is also written whenever this many seconds have passed since the
# last one, whatever ``checkpoint_every`` says: at 8 steps/s, 250 steps is half a minute
# that a kill -9 would lose, and slower steps (larger images, a GPU-less diffusion
# model) would lose more.
CHECKPOINT_SECONDS = 30.0


def data_signature(data: GeneratorData, **shape: Any) -> dict[str, Any]:
    """What a resumed training must share with the interrupted one: the classes, the image
    count, the target domain, ``shape`` (e.g. ``channels=1``) and a fingerprint of the
    images, labels, captions and domains."""
    digest = hashlib.sha256()
    digest.update(data.images.detach().cpu().float().contiguous().numpy().tobytes())
    digest.update(data.labels.detach().cpu().long().contiguous().numpy().tobytes())
    digest.update(json.dumps([data.captions, data.domains, data.target_domain]).encode())
    extra: dict[str, Any] = {}
    if data.synthesis != "text":  # text runs keep the fingerprints they always had
        extra["synthesis"] = data.synthesis
    if data.unlabelled is not None and len(data.unlabelled):
        digest.update(data.unlabelled.detach().cpu().float().contiguous().numpy().tobytes())
        extra["unlabelled_images"] = len(data.unlabelled)
    return {"classes": list(data.class_names), **shape, "images": len(data.images), **extra,
            "target_domain": data.target_domain, "fingerprint": digest.hexdigest()[:32]}


def data_differences(saved: dict[str, Any], ours: dict[str, Any]) -> str:
    """The differences between two :func:`data_signature` results, in words ("" when
    there are none)."""
    parts = []
    theirs = saved.get("classes", [])
    if len(theirs) != len(ours["classes"]):
        parts.append(f"{len(theirs)} classes (not {len(ours['classes'])})")
    elif theirs != ours["classes"]:
        parts.append(f"classes {', '.join(map(str, theirs))} (not {', '.join(ours['classes'])})")
    for key, value in ours.items():
        if key in ("classes", "fingerprint") or saved.get(key) == value:
            continue
        if isinstance(value, int):  # "2 channels (not 1)"
            parts.append(f"{saved.get(key)} {key} (not {value})")
        else:  # "target domain 'mnist' (not 'digits')"
            parts.append(f"{key.replace('_', ' ')} {saved.get(key)!r} (not {value!r})")
    if not parts and saved.get("fingerprint") != ours["fingerprint"]:
        parts.append("the same shapes but other images, labels or captions")
    return "; ".join(parts)


def draw_weights(domains: Sequence[str], target: str, target_weight: float) -> torch.Tensor:
    """Per-image draw probability: ``target_weight`` in all for the images of the
    ``target`` domain, the rest for the others (uniform when there is only one domain)."""
    is_target = torch.tensor([d == target for d in domains])
    n_target = int(is_target.sum())
    n_other = len(domains) - n_target
    if n_target == 0 or n_other == 0:
        return torch.ones(len(domains))
    return torch.where(is_target, target_weight / n_target, (1 - target_weight) / n_other)


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, without it (a module's state in a
    checkpoint that holds several)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_training_metadata(meta: dict[str, str], *, where: str, format: str, version: int,
                            options: dict[str, Any], data: dict[str, Any], device: str,
                            numbers: dict[str, type],
                            before: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a training checkpoint's metadata before resuming from it: its ``format`` and
    ``version``, that it was trained with ``options`` (the ones that change training; an
    option the checkpoint does not record had its ``before`` value) on
    ``data`` (a :func:`data_signature`) and ``device``; return the entries named in
    ``numbers`` converted (``{"step": int, "elapsed_s": float}``). Anything else is a
    :class:`UserError` that starts with ``where`` ("the gan checkpoint 'path'")."""
    from imgxfer.core.errors import UserError

    if meta.get("format") != format:
        raise UserError(f"{where} is not a {format.split('.')[1]} training checkpoint (it "
                        f"has no format={format} metadata).")
    if meta.get("version") != str(version):
        raise UserError(f"{where} has format version {meta.get('version')}; this version of "
                        f"the generator reads version {version}.")
    try:
        saved, trained_on = json.loads(meta["options"]), json.loads(meta["data"])
        values = {key: kind(meta[key]) for key, kind in numbers.items()}
    except (KeyError, ValueError) as error:
        raise UserError(f"{where} has damaged metadata ({error}).") from None
    saved = {**(before or {}), **saved}
    differ = [f"{k}={saved.get(k)!r} (not {v!r})" for k, v in options.items()
              if saved.get(k) != v]
    if differ:
        raise UserError(f"{where} was trained with other options: {', '.join(differ)}; "
                        "resume with the same options or start a new run.")
    differ_data = data_differences(trained_on, data)
    if differ_data:
        raise UserError(f"{where} was trained on other data: {differ_data}; resume with the "
                        "same data or start a new run.")
    if meta.get("device", device) != device:
        raise UserError(f"{where} was trained on {meta.get('device')}; resume it on "
                        f"{meta.get('device')} too (not {device}), or start anew.")
    return values


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state as flat tensors ``<prefix>.<index>.<name>``
    (e.g. Adam's ``step``, ``exp_avg``); its hyper-parameters follow from the options."""
    return {f"{prefix}.{index}.{name}": torch.as_tensor(value)
            for index, values in optimizer.state_dict()["state"].items()
            for name, value in values.items()}


def load_optimizer(tensors: dict[str, torch.Tensor], prefix: str,
                   optimizer: torch.optim.Optimizer) -> None:
    """Restore the state :func:`optimizer_tensors` saved, keeping the current
    hyper-parameters (``param_groups``)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in strip_prefix(tensors, prefix + ".").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})


def progress_tensors(generators: dict[str, torch.Generator],
                     history: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    """Random generator states (``rng.<name>``) and loss curves (``history.<name>``,
    float64): what besides weights makes a resumed run continue exactly."""
    tensors = {f"rng.{name}": g.get_state() for name, g in generators.items()}
    tensors.update({f"history.{name}": torch.tensor(values, dtype=torch.float64)
                    for name, values in history.items()})
    return tensors


def load_progress(tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator],
                  names: Sequence[str]) -> dict[str, list[float]]:
    """Set the random generators from :func:`progress_tensors`; return the loss curves
    named ``names``."""
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng.{name}"])
    return {name: tensors[f"history.{name}"].tolist() for name in names}


def check_fit_inputs(name: str, data: GeneratorData, checkpoint: Any) -> Any:
    """What ``fit`` must refuse before it builds anything: no images (a user's mistake,
    one sentence), inconsistent data (a caller's bug) and a checkpoint path whose folder
    does not exist. Returns the checkpoint as a ``Path`` (or ``None``)."""
    from pathlib import Path

    from imgxfer.core.errors import UserError

    n_images = len(data.images)
    if n_images == 0:
        raise UserError(f"{name}: there are no images to learn from.")
    if data.synthesis == "translate" and (data.unlabelled is None or not len(data.unlabelled)):
        raise UserError(f"{name}: --synthesis translate needs target-domain images to learn "
                        "the target's style from, and the target has none besides its test "
                        "split; lower --shots or give a larger target.")
    if not (len(data.labels) == len(data.captions) == len(data.domains) == n_images):
        raise ValueError("GeneratorData: images, labels, captions and domains differ in length")
    if data.labels.min() < 0 or data.labels.max() >= len(data.class_names):
        raise ValueError("GeneratorData: labels must index class_names")
    if checkpoint is None:
        return None
    checkpoint = Path(checkpoint)
    if not checkpoint.parent.is_dir():
        raise UserError(f"{name}: the folder of the checkpoint {str(checkpoint)!r} does not "
                        "exist.")
    return checkpoint


def to_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images in [0, 1] -> ``size`` x ``size`` squares in [-1, 1] (antialiased
    resize), what both built-in-style generators learn from."""
    import torch.nn.functional as F

    images = images.float()
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)
    return images.clamp(0, 1) * 2 - 1


@dataclass
class TrainingState:
    """What a training checkpoint holds, as live objects."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    generators: dict[str, torch.Generator]
    history: dict[str, list[float]]
    data: dict[str, Any]
    device: str
    step: int = 0
    elapsed: float = 0.0
    # The checkpoint's "format" metadata, for a generator that writes several kinds.
    format: str = ""


@dataclass
class Checkpointing:
    """Where and how often a training loop saves its :class:`TrainingState`:
    ``save(path, state)`` writes it, every ``every`` steps and whenever
    :data:`CHECKPOINT_SECONDS` have passed since the last save."""

    path: Path
    save: Callable[[Path, TrainingState], None]
    every: int


class CheckpointClock:
    """When the next checkpoint is due (``every`` steps, or ``seconds`` after the last
    one) and the training time so far, ``elapsed_before`` (an interrupted run's)
    included. ``clock`` is for tests."""

    def __init__(self, every: int, seconds: float | None = None, *, elapsed_before: float = 0.0,
                 step: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        # Read here, not at import, so a test can lower the module constant.
        self.seconds = CHECKPOINT_SECONDS if seconds is None else seconds
        self._clock, self._before = clock, elapsed_before
        self._started = self._last = clock()
        self.saved_at = step

    def elapsed(self) -> float:
        return self._before + self._clock() - self._started

    def due(self, step: int) -> bool:
        return step % self.every == 0 or self._clock() - self._last >= self.seconds

    def saved(self, step: int) -> None:
        self.saved_at, self._last = step, self._clock()


def train_steps(state: TrainingState, step: Callable[[int], dict[str, float]], *,
                budget: Budget, progress: Progress, description: str,
                checkpoint: Checkpointing | None = None) -> None:
    """Call ``step(index)`` (one optimisation step; it returns what the progress bar
    shows) until ``budget`` is spent, counting in ``state`` the steps and time of an
    interrupted run it resumes. With ``checkpoint``, ``state`` is saved on its schedule
    and at the end, so a killed run loses at most one interval of training."""
    left = None if budget.seconds is None else budget.seconds - state.elapsed
    run_budget = Budget(budget.steps, left).start()
    clock = CheckpointClock(checkpoint.every if checkpoint else 1,
                            elapsed_before=state.elapsed, step=state.step)

    def save() -> None:
        assert checkpoint is not None  # save() is only called with a checkpoint
        state.elapsed = clock.elapsed()
        checkpoint.save(checkpoint.path, state)
        clock.saved(state.step)

    with progress.task(description, total=budget.steps) as task:
        if state.step:
            task.advance(state.step)
        while not run_budget.done(state.step):
            with distributed.autocast():
                shown = step(state.step)
            state.step += 1
            if checkpoint is not None and clock.due(state.step):
                save()
            task.advance(1, **shown)
    distributed.sync_buffers(*state.modules.values())
    if checkpoint is not None and (clock.saved_at != state.step or not checkpoint.path.exists()):
        save()
