"""Contract checks for components: what a plugin author calls from their own tests.

Each ``check_<kind>(factory, *args, **options)`` builds the component the way imgxfer does
(through a registry entry, so options are refused by name before the factory runs), runs
it on tiny data and asserts what :mod:`imgxfer.plugin.protocols` promises: members, shapes,
value ranges, determinism for a seed (weights from the component's own seed, not from
torch's global generator), training within ``budget.steps`` (optimiser steps are
counted), a classifier returned in eval mode, and a state-dict round trip through
safetensors. It returns the component it built, for further checks of the author's own.
A broken promise is an ``AssertionError`` that says which one and what was expected::

    from imgxfer.plugin.testing import check_encoder
    from imgxfer_mine import MyEncoder

    def test_my_encoder_keeps_the_protocol():
        check_encoder(MyEncoder, width=8)

imgxfer's own tests run these over every registered component, built-in and first-party.
``args`` is the rest of a family name (``folder:PATH`` -> ``"PATH"``); the keywords of
each check that are not options of the component are named ``fit_steps``, ``data`` and
``encoder``.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress
from imgxfer.data.dataset import GeneratorData, ImageDataset, TransferData
from imgxfer.data.scenes import IGNORE, SceneDataset
from imgxfer.nn.classifier import Classifier, rebuild
from imgxfer.plugin.protocols import Encoder, FitResult, declared, encoder_input_size
from imgxfer.plugin.registry import Component

__all__ = ["check_encoder", "check_captioner", "check_generator", "check_adapter",
           "check_dense_adapter", "tiny_scenes", "check_dataset", "check_tunable",
           "tiny_shapes", "tiny_generator_data", "tiny_transfer_data"]

CPU = torch.device("cpu")
SHAPES = ["bar", "column", "dot"]
# The sets of TransferData an adapter may name in ``uses``.
SETS = ("source", "target_labelled", "target_unlabelled", "synthetic")


def tiny_shapes(domain: str, *, n_per_class: int = 12, size: int = 16, channels: int = 1,
                seed: int = 0, invert: bool = False) -> ImageDataset:
    """Three separable shapes (a bar, a column, a dot) with jitter and noise; ``invert``
    gives a shifted domain (dark shapes on light)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(3 * n_per_class, 1, size, size)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    for i, y in enumerate(labels.tolist()):
        o = int(torch.randint(2, size - 5, (1,), generator=g))
        if y == 0:
            images[i, 0, o:o + 2, 2:-2] = 1
        elif y == 1:
            images[i, 0, 2:-2, o:o + 2] = 1
        else:
            images[i, 0, o:o + 3, o:o + 3] = 1
    images = (images + 0.1 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    images = (1 - images if invert else images).expand(-1, channels, -1, -1).contiguous()
    return ImageDataset(images, labels, list(SHAPES), domain, description="tiny shape")


def tiny_generator_data(*, size: int = 16, channels: int = 1) -> GeneratorData:
    """Source shapes plus three target shots per class, captioned, as a run passes them."""
    source = tiny_shapes("shapes", n_per_class=12, size=size, channels=channels)
    target = tiny_shapes("inverted", n_per_class=3, size=size, channels=channels, seed=1,
                         invert=True)
    captions = [f"a tiny shape {SHAPES[y]}, domain {d.domain}"
                for d in (source, target) for y in d.labels.tolist()]
    return GeneratorData(torch.cat([source.images.tensor(), target.images.tensor()]),
                         torch.cat([source.labels, target.labels]), captions,
                         [source.domain] * len(source) + [target.domain] * len(target),
                         list(SHAPES), target.domain)


def tiny_transfer_data(*, size: int = 16, channels: int = 1) -> TransferData:
    """Labelled source shapes, two labelled target shots per class, unlabelled target
    images and a few synthetic ones: every set an adapter may use."""
    target = tiny_shapes("inverted", n_per_class=10, size=size, channels=channels, seed=1,
                         invert=True)
    per_class = [torch.nonzero(target.labels == c).flatten() for c in range(3)]
    shots = torch.cat([i[:2] for i in per_class])
    rest = torch.cat([i[2:] for i in per_class])
    synthetic = tiny_shapes("synthetic-inverted", n_per_class=2, size=size, channels=channels,
                            seed=2, invert=True)
    return TransferData(tiny_shapes("shapes", n_per_class=12, size=size, channels=channels),
                        target.subset(shots), target.subset(rest), synthetic)


def _entry(kind: str, factory: Callable[..., Any], args: tuple[Any, ...]) -> Component:
    """A registry entry for ``factory``, so it is built exactly as imgxfer builds it (a
    family when it takes the rest of a name)."""
    return Component(kind, "check:" if args else "check", factory, "check", "")


def _build(kind: str, factory: Callable[..., Any], args: tuple[Any, ...],
           options: dict[str, Any], seed: int = 0) -> Any:
    entry = _entry(kind, factory, args)
    if "seed" in entry.options() and "seed" not in options:
        options = {**options, "seed": seed}
    # The global generator is left as it is: a component must draw from its own seed
    # (imgxfer.plugin.protocols), which _check_seeded_build checks.
    return entry.build("check:" + str(args[0]) if args else "check", options)


def _seed_advice(kind: str, factory: Callable[..., Any], args: tuple[Any, ...]) -> str:
    if "seed" in _entry(kind, factory, args).options():
        return ("draw them from a torch.Generator seeded with the `seed` option (or call "
                "torch.manual_seed(seed) inside torch.random.fork_rng)")
    return "take a `seed` option and draw them from a torch.Generator seeded with it"


def _check_seeded_build(kind: str, factory: Callable[..., Any], args: tuple[Any, ...],
                        options: dict[str, Any], first: Any) -> None:
    """A second build with the same seed, after torch's global generator moved on, has
    the same weights as ``first``: weights drawn from the global generator differ
    between runs that differ anywhere before the build."""
    torch.rand(16)  # move the global generator, as a run's earlier stages do
    again = _build(kind, factory, args, options)
    ours, theirs = first.state_dict(), again.state_dict()
    differ = [k for k, v in ours.items()
              if isinstance(v, torch.Tensor) and not torch.equal(v, theirs[k])]
    assert not differ, (
        f"two {kind} built with the same seed have different weights ({differ[0]}) once "
        f"torch's global generator moved: {_seed_advice(kind, factory, args)}")


@contextmanager
def _optimizer_steps() -> Iterator[dict[int, int]]:
    """The ``step()`` calls of each torch optimiser while inside, by optimiser: how many
    steps a component trained, whatever its loop looks like."""
    counts: dict[int, int] = {}

    def count(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        counts[id(optimizer)] = counts.get(id(optimizer), 0) + 1

    handle = register_optimizer_step_post_hook(count)
    try:
        yield counts
    finally:
        handle.remove()


def _check_steps(what: str, counts: dict[int, int], steps: int) -> None:
    taken = max(counts.values(), default=0)
    assert taken <= steps, (f"{what} ran {taken} optimiser steps for budget.steps = {steps}, "
                            "expected at most that: stop when budget.done(step) is true")


def _check_refuses_unknown_options(kind: str, factory: Callable[..., Any],
                                   args: tuple[Any, ...]) -> None:
    entry = _entry(kind, factory, args)
    if any(p.kind is p.VAR_KEYWORD for p in entry._parameters()):
        return  # it takes any option: refusing is the factory's own business
    try:
        entry.build("check:" + str(args[0]) if args else "check", {"no_such_option": 1})
    except UserError as error:
        assert "no_such_option" in str(error), f"the refusal does not name the option: {error}"
    else:
        raise AssertionError("an unknown option was accepted")


def _round_trip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` written to a safetensors file and read back, as run folders keep it."""
    from imgxfer.core.runfolder import atomic_save_tensors, read_tensors

    for key, value in state.items():
        assert isinstance(key, str) and isinstance(value, torch.Tensor), \
            f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.safetensors"
        atomic_save_tensors(path, state)
        return read_tensors(path)[0]


# --------------------------------------------------------------------------- encoders
def check_encoder(factory: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """An encoder maps images of any channel count and size, through ``preprocess`` (to
    ``[B, in_channels, *input_size]``), to finite ``[B, feature_dim]`` features, the same
    for the same seed (whatever torch's global generator did before) and after a state
    round trip; ``pretrain`` (when declared) trains on tiny source data within its
    budget."""
    encoder = _build("encoders", factory, args, options)
    assert isinstance(encoder, torch.nn.Module), "an encoder must be a torch.nn.Module"
    assert isinstance(encoder.feature_dim, int) and encoder.feature_dim > 0, "feature_dim"
    size = encoder_input_size(encoder)  # an int or (H, W); building refused any other form
    assert isinstance(encoder.weights_source, str) and encoder.weights_source, "weights_source"
    _check_seeded_build("encoders", factory, args, options, encoder)
    encoder.eval()
    features = {}
    for channels in (1, 3):
        images = torch.rand(2, channels, 20, 24, generator=torch.Generator().manual_seed(0))
        # encoder is narrowed to nn.Module above; these are the Encoder protocol's members
        x = cast(Encoder, encoder).preprocess(images)
        expected = (2, cast(Encoder, encoder).in_channels, *size)
        assert tuple(x.shape) == expected, (
            f"preprocess gave shape {tuple(x.shape)} for 2 {channels}-channel 20x24 images, "
            f"expected {expected}: in_channels is {encoder.in_channels} and input_size "
            f"{encoder.input_size}")
        with torch.no_grad():
            features[channels] = out = encoder(x)
        assert out.shape == (2, encoder.feature_dim), (
            f"forward gave shape {tuple(out.shape)}, expected {(2, encoder.feature_dim)}: "
            f"feature_dim is {encoder.feature_dim}")
        assert out.isfinite().all(), "forward gave non-finite features"
    again = _build("encoders", factory, args, options).eval()
    x = cast(Encoder, encoder).preprocess(
        torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert torch.allclose(again(x), features[1], atol=1e-5), \
            "two encoders built with the same seed compute different features"
        again.load_state_dict(_round_trip(encoder.state_dict()))
        assert torch.allclose(again(x), features[1], atol=1e-6), "state_dict round trip"
    if declared(encoder, "pretrains", "encoders"):
        with _optimizer_steps() as counts:
            # pretrain is optional, so not a member of the Encoder protocol
            result = cast(Any, encoder).pretrain(tiny_shapes("shapes", size=16),
                                                 budget=Budget(2).start(),
                                                 progress=NullProgress(), device=CPU)
        _check_steps("pretrain", counts, 2)
        json.dumps(result or {})  # merged into metrics.json
    _check_refuses_unknown_options("encoders", factory, args)
    return encoder


# --------------------------------------------------------------------------- captioners
def check_captioner(factory: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """One non-empty caption per image or label, with and without images, for unlabelled
    images with a classifier's guess, and the same captions for the same input."""
    captioner = _build("captioners", factory, args, options)
    data = tiny_shapes("shapes", n_per_class=2)
    kw = {"class_names": data.class_names, "domain": data.domain,
          "description": data.description}

    def captions(*call: Any, **extra: Any) -> list[str]:
        out = captioner.caption(*call, **kw, **extra)
        assert isinstance(out, list) and len(out) == len(data), \
            f"caption returned {type(out).__name__} of length {len(out)} for {len(data)} images"
        assert all(isinstance(c, str) and c.strip() for c in out), "empty or non-text caption"
        return out

    images = data.images.tensor()
    labelled = captions(images, data.labels)
    assert captions(images, data.labels) == labelled, "captions are not deterministic"
    captions(None, data.labels)
    captions(images, None,
             classifier=lambda images: torch.full((len(images), 3), 1 / 3))
    _check_refuses_unknown_options("captioners", factory, args)
    return captioner


# --------------------------------------------------------------------------- generators
def check_tunable(kind: str, factory: Callable[..., Any], *args: Any,
                  **options: Any) -> dict[str, Any]:
    """The factory's ``tunable`` declaration (:mod:`imgxfer.plugin.tunable`), if any, is well
    formed (known options, valid ranges) and the factory accepts both ends of every range
    and every choice, since `imgxfer tune` may pick any of them. Returns the ranges.
    ``check_adapter`` and ``check_generator`` call it."""
    from imgxfer.plugin.tunable import declared_ranges

    try:
        ranges = declared_ranges(_entry(kind, factory, args))
    except UserError as error:
        raise AssertionError(str(error)) from None
    for name, rng in ranges.items():
        for value in rng.values if rng.scale == "choice" else rng.values[:2]:
            try:
                _build(kind, factory, args, {**options, name: value})
            except UserError as error:
                raise AssertionError(f"tunable {name}={value!r} is refused: {error}") from None
    return ranges


def check_generator(factory: Callable[..., Any], *args: Any, fit_steps: int = 2,
                    data: GeneratorData | None = None, **options: Any) -> Any:
    """``fit`` returns a :class:`FitResult`; ``sample`` gives one float image in [0, 1] per
    prompt on the CPU, the same for the same seed, other images for another seed, and the
    same again from a fresh generator loaded from the saved state."""
    data = data or tiny_generator_data()
    check_tunable("generators", factory, *args, **options)
    generator = _build("generators", factory, args, options)
    conditioning = set(generator.conditioning)
    assert conditioning and conditioning <= {"label", "text"}, f"conditioning {conditioning}"
    budget = Budget(fit_steps if declared(generator, "trains_by_steps", "generators") else 0)
    result = generator.fit(data, budget=budget.start(), progress=NullProgress(), device=CPU)
    assert isinstance(result, FitResult), f"fit returned {type(result).__name__}, not FitResult"
    assert result.steps >= 0 and all(isinstance(v, list) for v in result.losses.values())
    prompts = [f"a tiny shape {SHAPES[y]}, domain {data.target_domain}" for y in (0, 1, 2, 0)]
    labels = torch.tensor([0, 1, 2, 0])
    images = generator.sample(prompts, labels, seed=3, device=CPU)
    assert isinstance(images, torch.Tensor) and images.ndim == 4 and len(images) == 4, \
        f"sample gave {getattr(images, 'shape', type(images))} for 4 prompts"
    assert images.is_floating_point() and images.device.type == "cpu", "float images on the CPU"
    assert images.min() >= 0 and images.max() <= 1, "images outside [0, 1]"
    assert torch.equal(images, generator.sample(prompts, labels, seed=3, device=CPU)), \
        "the same seed drew other images"
    _check_seeded_generator(factory, args, options, data, budget, (prompts, labels), images)
    assert not torch.equal(images, generator.sample(prompts, labels, seed=4, device=CPU)), \
        "another seed drew the same images"
    count = declared(generator, "num_classes", "generators")
    assert count in (None, len(data.class_names)), f"num_classes {count}"
    state = _round_trip(generator.state_dict())
    fresh = _build("generators", factory, args, options)
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.sample(prompts, labels, seed=3, device=CPU), images, atol=1e-5), \
        "a generator loaded from the saved state draws other images"
    resolved = declared(generator, "resolved_options", "generators")
    if resolved is not None:
        json.dumps(resolved())  # recorded in generator.safetensors' metadata
    if declared(generator, "resumable", "generators"):
        _check_resumes(factory, args, options, data, fit_steps)
    for mode in sorted(set(declared(generator, "synthesis", "generators")) - {"text"}):
        _check_edits(factory, args, options, data, mode, fit_steps)
    _check_refuses_unknown_options("generators", factory, args)
    return generator


def _check_seeded_generator(factory: Callable[..., Any], args: tuple[Any, ...],
                            options: dict[str, Any], data: GeneratorData, budget: Budget,
                            call: tuple[list[str], torch.Tensor], images: torch.Tensor) -> None:
    """Built with the same seed after torch's global generator moved, and fitted alike, a
    generator draws the same images: its weights (made when built or when fitted) come
    from its own seed."""
    torch.rand(16)  # move the global generator, as a run's earlier stages do
    again = _build("generators", factory, args, options)
    again.fit(data, budget=Budget(budget.steps, budget.seconds).start(),
              progress=NullProgress(), device=CPU)
    assert torch.equal(again.sample(*call, seed=3, device=CPU), images), (
        "two generators built with the same seed and fitted alike draw other images once "
        f"torch's global generator moved: {_seed_advice('generators', factory, args)}")


def _check_edits(factory: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any],
                 data: GeneratorData, mode: str, fit_steps: int) -> None:
    """A generator that declares ``shots`` or ``translate`` trains for it (``translate``
    with unlabelled target images) and ``edit`` gives one float image in [0, 1] per input
    on the CPU, the same for the same seed, and the same from a generator loaded from the
    saved state."""
    is_target = torch.tensor([d == data.target_domain for d in data.domains])
    unlabelled = data.images[is_target] if mode == "translate" else None
    data = replace(data, synthesis=mode, unlabelled=unlabelled)
    generator = _build("generators", factory, args, options)
    budget = Budget(fit_steps if declared(generator, "trains_by_steps", "generators") else 0)
    generator.fit(data, budget=budget.start(), progress=NullProgress(), device=CPU)
    pick = torch.nonzero(is_target if mode == "shots" else ~is_target).flatten()[:4]
    inputs, labels = data.images[pick], data.labels[pick]
    prompts = [f"a tiny shape {SHAPES[y]}, domain {data.target_domain}" for y in labels.tolist()]
    images = generator.edit(inputs, labels, prompts, seed=3, device=CPU)
    assert isinstance(images, torch.Tensor) and images.ndim == 4 and len(images) == len(pick), \
        f"edit ({mode}) gave {getattr(images, 'shape', type(images))} for {len(pick)} images"
    assert images.is_floating_point() and images.device.type == "cpu", "float images on the CPU"
    assert images.min() >= 0 and images.max() <= 1, f"edit ({mode}) gave values outside [0, 1]"
    assert torch.equal(images, generator.edit(inputs, labels, prompts, seed=3, device=CPU)), \
        f"edit ({mode}): the same seed gave other images"
    fresh = _build("generators", factory, args, options)
    fresh.load_state_dict(_round_trip(generator.state_dict()))
    assert torch.allclose(fresh.edit(inputs, labels, prompts, seed=3, device=CPU), images,
                          atol=1e-5), f"edit ({mode}): a loaded generator gives other images"


def _check_resumes(factory: Callable[..., Any], args: tuple[Any, ...],
                   options: dict[str, Any], data: GeneratorData, fit_steps: int) -> None:
    """A generator that declares ``resumable`` writes its training checkpoint when given
    one, continues from it with ``resume=True``, and counts the steps before it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.safetensors"
        first = _build("generators", factory, args, options)
        first.fit(data, budget=Budget(fit_steps).start(), progress=NullProgress(), device=CPU,
                  checkpoint=path)
        assert path.is_file(), "fit(checkpoint=path) wrote no checkpoint"
        again = _build("generators", factory, args, options)
        result = again.fit(data, budget=Budget(fit_steps + 1).start(), progress=NullProgress(),
                           device=CPU, checkpoint=path, resume=True)
        assert result.steps == fit_steps + 1, \
            f"resumed at step {fit_steps} for a budget of {fit_steps + 1}, it ended at {result.steps}"


# --------------------------------------------------------------------------- adapters
def _tiny_encoder() -> Any:
    from imgxfer.nn.nets import SmallConvNet

    return SmallConvNet(width=4, input_size=16, in_channels=1, seed=0)


def check_adapter(factory: Callable[..., Any], *args: Any, fit_steps: int = 3,
                  encoder: Any = None, data: TransferData | None = None,
                  **options: Any) -> Any:
    """``uses`` names known sets; ``fit`` takes at most ``budget.steps`` optimiser steps
    (unless it declares ``trains_by_steps = False``) and returns a :class:`Classifier` in
    eval mode giving finite logits for every class, the same for the same seed, and the
    same after a state round trip into a fresh classifier (what ``imgxfer predict``
    does)."""
    data = data or tiny_transfer_data()
    encoder = encoder if encoder is not None else _tiny_encoder()
    check_tunable("adapters", factory, *args, **options)

    def fit() -> Classifier:
        adapter = _build("adapters", factory, args, options)
        _check_uses(adapter.uses)
        torch.manual_seed(0)  # a run resets the global generator before each adapter too
        with _optimizer_steps() as counts:
            model = adapter.fit(copy.deepcopy(encoder), data, budget=Budget(fit_steps).start(),
                                progress=NullProgress(), device=CPU)
        if declared(adapter, "trains_by_steps", "adapters"):
            _check_steps("fit", counts, fit_steps)
        assert isinstance(model, Classifier), \
            f"fit returned a {type(model).__name__}, not an imgxfer.nn.classifier.Classifier"
        training = [name or "the classifier" for name, m in model.named_modules() if m.training]
        assert not training, (f"fit returned the classifier in training mode ({training[0]} is "
                              "training), expected eval mode: call model.eval() before "
                              "returning it")
        return model

    model, twin = fit(), fit()
    x = encoder.preprocess(data.target_unlabelled.images.tensor())
    with torch.no_grad():
        logits = model(x)
        classes = len(data.class_names)
        assert logits.shape == (len(x), classes), (
            f"logits of shape {tuple(logits.shape)} for {len(x)} images, expected "
            f"{(len(x), classes)}: the data has {classes} classes")
        assert logits.isfinite().all(), "non-finite logits"
        assert torch.allclose(twin(x), logits, atol=1e-5), "the same seed fitted another model"
        rebuilt = rebuild(copy.deepcopy(encoder), len(data.class_names),
                          _round_trip(model.state_dict())).eval()
        assert torch.allclose(rebuilt(x), logits, atol=1e-5), "state_dict round trip"
    _check_refuses_unknown_options("adapters", factory, args)
    return model


def _check_uses(uses: Any) -> None:
    uses = set(uses)
    unknown = sorted(uses - set(SETS))
    assert uses and not unknown, (
        f"uses {sorted(uses)} names {'no set' if not uses else ', '.join(unknown)}, expected "
        f"a non-empty subset of {', '.join(SETS)}")


# --------------------------------------------------------------------------- dense adapters
def tiny_scenes(domain: str = "tiny-scenes", n: int = 24, size: int = 32, seed: int = 0,
                invert: bool = False) -> SceneDataset:
    """Squares and bars, one per half of a dark canvas, with exact masks and boxes;
    ``invert`` gives a shifted domain (dark objects on a light canvas)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    boxes, labels = [], []
    for i in range(n):
        found, kinds = [], []
        for half in (0, 1):
            kind = int(torch.randint(2, (1,), generator=g))
            h, w = (8, 8) if kind == 0 else (4, 12)
            y = int(torch.randint(0, size - h, (1,), generator=g))
            x = half * size // 2 + int(torch.randint(0, size // 2 - w + 1, (1,), generator=g))
            images[i, 0, y:y + h, x:x + w] = 1
            masks[i, y:y + h, x:x + w] = kind + 1
            found.append([x, y, x + w, y + h])
            kinds.append(kind)
        boxes.append(torch.tensor(found, dtype=torch.float32))
        labels.append(torch.tensor(kinds))
    images = (images + 0.1 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    return SceneDataset(1 - images if invert else images, ["square", "bar"], domain, masks,
                        boxes, labels, description="tiny shape scene")


def _same(a: Any, b: Any) -> bool:
    """Equal outputs of a dense model (a tensor or a dict of tensors)."""
    if isinstance(a, torch.Tensor):
        return torch.allclose(a, b, atol=1e-5)
    return all(torch.allclose(a[k], b[k], atol=1e-5) for k in b)


def check_dense_adapter(factory: Callable[..., Any], *args: Any, fit_steps: int = 3,
                        **options: Any) -> None:
    """A dense adapter (``--task segment|detect``): it declares dense ``tasks`` and known
    ``uses``, and for each task its ``fit`` returns a :class:`~imgxfer.nn.dense.model.
    DenseModel` with finite outputs, the same for the same seed and after a state round
    trip into a freshly built model (what ``imgxfer predict`` does)."""
    from imgxfer.data.dataset import TransferData
    from imgxfer.nn.dense.model import DEFAULT_HEAD, DenseModel
    from imgxfer.nn.nets import SmallConvNet

    adapter = _build("adapters", factory, args, options)
    tasks = set(getattr(adapter, "tasks", ()))
    assert tasks and tasks <= {"segment", "detect"}, \
        f"tasks {sorted(tasks)}, expected a non-empty subset of segment, detect"
    _check_uses(adapter.uses)
    target = tiny_scenes("tiny-target", n=12, seed=1, invert=True)
    # TransferData's fields are typed for classification; a dense adapter gets scene
    # datasets in them (see its docstring).
    data = TransferData(cast(Any, tiny_scenes(n=12)), cast(Any, target.subset([0, 1])),
                        cast(Any, target.subset(list(range(2, 12)))),
                        cast(Any, tiny_scenes(n=4, seed=2)))
    for task in sorted(tasks):
        def fit(task: str = task) -> DenseModel:
            torch.manual_seed(0)
            encoder = SmallConvNet(width=4, input_size=32, in_channels=1, seed=0)
            model = DenseModel(encoder, DEFAULT_HEAD[task], data.class_names, (32, 32))
            fitted = _build("adapters", factory, args, options).fit(
                model, data, budget=Budget(fit_steps).start(), progress=NullProgress(),
                device=CPU)
            assert isinstance(fitted, DenseModel), f"fit returned a {type(fitted).__name__}"
            return fitted.eval()

        model, twin = fit(), fit()
        rebuilt = DenseModel(
            SmallConvNet(width=4, input_size=32, in_channels=1, seed=1), DEFAULT_HEAD[task],
            data.class_names, (32, 32))
        rebuilt.load_state_dict(_round_trip(model.state_dict()))
        x = model.preprocess(target.images.tensor()[:4])
        with torch.no_grad():
            out = model(x)
            values = out if isinstance(out, torch.Tensor) else torch.cat(
                [v.flatten() for v in out.values()])
            assert values.isfinite().all(), f"{task}: non-finite outputs"
            assert _same(twin(x), out), f"{task}: the same seed fitted another model"
            assert _same(rebuilt.eval()(x), out), f"{task}: state_dict round trip"
    _check_refuses_unknown_options("adapters", factory, args)


# --------------------------------------------------------------------------- datasets
def check_dataset(factory: Callable[..., Any], *args: Any,
                  **options: Any) -> ImageDataset | SceneDataset:
    """An :class:`ImageDataset` whose images (a tensor or an image store) read as float
    [N, C, H, W] in [0, 1] of the shape the store states, labels indexing at least two
    class names, a domain name, and the same images when built twice. A
    :class:`~imgxfer.data.scenes.SceneDataset` (the dense tasks') instead has masks and boxes
    that fit its images and classes (:func:`_check_scene_annotations`)."""
    data = _build("datasets", factory, args, options)
    assert isinstance(data, (ImageDataset, SceneDataset)), \
        f"a {type(data).__name__}, not an ImageDataset or a SceneDataset"
    assert len(data) > 0, "no images"
    images = data.images.tensor()
    assert images.is_floating_point() and images.ndim == 4, "float [N, C, H, W]"
    assert tuple(images.shape) == tuple(data.images.shape), \
        f"the store says {tuple(data.images.shape)}, reads {tuple(images.shape)}"
    assert images.shape[1] in (1, 3), f"{images.shape[1]} channels"
    assert images.min() >= 0 and images.max() <= 1, "images outside [0, 1]"
    assert all(isinstance(c, str) and c for c in data.class_names), "class names"
    assert isinstance(data.domain, str) and data.domain, "domain"
    again = _build("datasets", factory, args, options)
    assert torch.equal(again.images.tensor(), images), "two builds gave other images"
    if isinstance(data, SceneDataset):
        _check_scene_annotations(data, again)
    else:
        assert data.num_classes >= 2, "fewer than two classes"
        assert int(data.labels.min()) >= 0 and int(data.labels.max()) < data.num_classes
        assert torch.equal(again.labels, data.labels), "two builds gave other labels"
    _check_refuses_unknown_options("datasets", factory, args)
    return data


def _check_scene_annotations(data: SceneDataset, again: SceneDataset) -> None:
    """Masks [N, H, W] of 0..C or IGNORE; boxes [K, 4] inside the image with x0 < x1 and
    y0 < y1, labels indexing the classes; the same annotations when built twice."""
    n, _, h, w = data.images.shape
    assert data.num_classes >= 1 and data.tasks, "no classes, or neither masks nor boxes"
    if data.masks is not None:
        assert data.masks.dtype == torch.long and tuple(data.masks.shape) == (n, h, w), \
            f"masks {tuple(data.masks.shape)} for images {tuple(data.images.shape)}"
        valid = (data.masks >= 0) & ((data.masks <= data.num_classes) | (data.masks == IGNORE))
        assert valid.all(), "mask values outside 0..num_classes and IGNORE"
        assert again.masks is not None and torch.equal(again.masks, data.masks), \
            "two builds gave other masks"
    if data.boxes is not None:
        assert data.box_labels is not None and again.boxes is not None
        for boxes, labels in zip(data.boxes, data.box_labels, strict=True):
            assert boxes.shape == (len(labels), 4), f"boxes {tuple(boxes.shape)}"
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() \
                and (boxes[:, 3] <= h).all(), "boxes outside the image"
            assert (boxes[:, :2] < boxes[:, 2:]).all(), "boxes with x1 <= x0 or y1 <= y0"
            assert ((labels >= 0) & (labels < data.num_classes)).all(), "box labels"
        assert all(torch.equal(a, b) for a, b in zip(again.boxes, data.boxes, strict=True)), \
            "two builds gave other boxes"


def check_installed_plugin(name: str, module: str, components: dict[str, list[str]],
                           install: str) -> Any:
    """Check that an installed plugin is found through its entry point ``name`` (group
    ``imgxfer``) pointing at ``module``, loads without error and registers exactly
    ``components`` (kind -> sorted names); returns the host that loaded only it.
    ``install`` is the command the failure message suggests."""
    import importlib.metadata as md

    from imgxfer.plugin.host import PluginHost

    eps = {ep.name: ep for ep in md.entry_points(group="imgxfer")}
    assert name in eps, (f"no {name!r} entry point in group 'imgxfer': install the plugin "
                         f"with `{install}` before running these tests")
    assert eps[name].value == module
    host = PluginHost(env={"IMGXFER_LOAD_PLUGINS": name}).load_all()
    info = host.plugins[name]
    assert (info.status, info.source, info.error) == ("ok", "entry point", "")
    assert info.components == components
    return host
