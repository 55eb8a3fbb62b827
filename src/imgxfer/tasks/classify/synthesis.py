"""Making a run's synthetic images in one of three ways (``--synthesis``; docs/architecture.md):

- ``text``: a prompt and a label per image, drawn by ``Generator.sample``;
- ``shots``: the labelled target images edited by ``Generator.edit`` (DA-Fusion,
  Trabucco et al. 2023: real images varied, their class kept);
- ``translate``: labelled *source* images turned into the target's style by
  ``Generator.edit``, their labels kept (PixelDA, Bousmalis et al. 2017), which works
  with no target label at all, since the style is learned from unlabelled target images.

``auto`` (the default) is ``translate`` where the generator can translate and the target
has unlabelled images, else ``text`` (:func:`choose_mode`). The modes a generator can do
are declared in its ``synthesis`` attribute
(:class:`imgxfer.plugin.protocols.Generator`); asking for another is one sentence naming the
generators that can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from imgxfer.core.errors import UserError
from imgxfer.data.dataset import ImageDataset, Split
from imgxfer.plugin.protocols import declared


def generator_modes(generator: Any) -> frozenset[str]:
    return frozenset(declared(generator, "synthesis", "generators"))


def check_mode(mode: str, generator: Any, name: str, registry: Any) -> None:
    """Refuse a mode the generator cannot do, naming the registered generators that can
    (their factories declare ``synthesis``; families are listed by prefix)."""
    modes = generator_modes(generator)
    if mode in modes:
        return
    able = [n for n in registry.names("generators")
            if mode in getattr(registry.get("generators", n).factory, "synthesis", ())]
    hint = (f"generators that can: {', '.join(able)}" if able else
            "no installed generator can (the imgxfer-diffusers plugin's 'diffusion' does "
            "shots and translate: imgxfer install diffusers)")
    raise UserError(f"generator {name!r} cannot do --synthesis {mode} (it does "
                    f"{', '.join(sorted(modes))}); {hint}.")


def choose_mode(generator: Any, name: str, unlabelled: int) -> tuple[str, str]:
    """``--synthesis auto``: the mode a run uses and why, in one sentence for config.toml
    and the report. Translation where the generator can translate and the target has
    unlabelled images to learn its style from (the one mode measured to pay: it needs no
    target label; docs/benchmarks.md), else images from prompts; a generator that can do
    neither is one sentence naming the modes it does."""
    modes = generator_modes(generator)
    if "translate" in modes and unlabelled:
        return "translate", (f"auto: {name} can translate and the target has {unlabelled} "
                             "unlabelled images to learn its style from")
    if "text" in modes:
        why = (f"{name} cannot translate" if "translate" not in modes
               else "the target has no unlabelled images to learn its style from")
        return "text", f"auto: {why}, so {name} draws images from prompts"
    need = ("unlabelled target images (lower --shots or --test-fraction)"
            if "translate" in modes else "a generator that can")
    raise UserError(f"--synthesis auto: generator {name!r} can neither translate here nor draw "
                    f"from prompts (it does {', '.join(sorted(modes)) or 'nothing'}); translating "
                    f"needs {need}, or choose --synthesis {' or '.join(sorted(modes)) or 'text'}.")


def edit_inputs(mode: str, source: ImageDataset, split: Split, per_class: int,
                seed: int) -> ImageDataset:
    """The ``per_class`` labelled images per class that ``edit`` turns into synthetic ones:
    for ``shots`` the class's labelled target images in turn (each edited about
    ``per_class / shots`` times, with other noise each time); for ``translate`` a seeded
    draw of the class's source images, without repeats until the class runs out. A class
    with no image to start from gets none."""
    pool = split.labelled if mode == "shots" else source
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(pool.num_classes):
        index = torch.nonzero(pool.labels == c).flatten()
        if not len(index) or per_class == 0:
            continue
        rounds = -(-per_class // len(index))
        order = torch.cat([index[torch.randperm(len(index), generator=g)] for _ in range(rounds)])
        picked.append(order[:per_class])
    if not picked:
        return pool.subset(torch.zeros(0, dtype=torch.long))
    return pool.subset(torch.cat(picked))


def synthesis_prompts(captioner: Any, labels: torch.Tensor, labelled: ImageDataset,
                      labelled_captions: list[str], *, seed: int = 0) -> list[str]:
    """One prompt per synthetic label: the caption of a (seeded) randomly chosen labelled
    target image of that class, so prompts carry what the captioner saw in target images
    (style, stroke, layout); for a class without labelled images, the captioner's
    image-free caption of the label."""
    g = torch.Generator().manual_seed(seed)
    by_class = {c: torch.nonzero(labelled.labels == c).flatten()
                for c in range(labelled.num_classes)}
    missing = [i for i, y in enumerate(labels.tolist()) if not len(by_class[y])]
    fallback = (captioner.caption(None, labels[missing], class_names=labelled.class_names,
                                  domain=labelled.domain, description=labelled.description)
                if missing else [])
    fallback_of = dict(zip(missing, fallback, strict=True))
    prompts = []
    for i, y in enumerate(labels.tolist()):
        pool = by_class[y]
        if len(pool):
            j = int(pool[torch.randint(len(pool), (1,), generator=g)])
            prompts.append(labelled_captions[j])
        else:
            prompts.append(fallback_of[i])
    return prompts


@dataclass
class Synthesised:
    """A generator's output before filtering: images, labels, the prompts they followed
    and, for ``shots`` and ``translate``, the real images they were made from."""

    images: torch.Tensor | None
    labels: torch.Tensor
    prompts: list[str]
    inputs: ImageDataset | None = None


def synthesise(mode: str, generator: Any, captioner: Any, source: ImageDataset, split: Split,
               target_captions: list[str], *, per_class: int, seed: int,
               device: torch.device) -> Synthesised:
    """Draw the run's synthetic images in ``mode``, as the generator returns them (the
    pipeline checks them: :func:`imgxfer.tasks.classify.stages.generate.check_images`)."""
    classes = split.test.num_classes
    inputs = None
    if mode == "text":
        labels = torch.arange(classes).repeat_interleave(per_class)
    else:
        inputs = edit_inputs(mode, source, split, per_class, seed)
        labels = inputs.labels
    prompts = synthesis_prompts(captioner, labels, split.labelled, target_captions, seed=seed)
    if not len(labels):
        return Synthesised(None, labels, prompts, inputs)
    if inputs is None:
        images = generator.sample(prompts, labels, seed=seed, device=device)
    else:
        images = generator.edit(inputs.images.tensor(), labels, prompts, seed=seed, device=device)
    return Synthesised(images, labels, prompts, inputs)
