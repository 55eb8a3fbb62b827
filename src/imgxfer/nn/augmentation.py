"""Augmentation policies (``--augment``): Kornia pipelines applied to whole batches on the
training device, seeded from the caller's generator.

One policy name sets the strength of augmentation everywhere a run trains:

- ``none``: no augmentation.
- ``light`` (the default): a small affine warp (rotation ±10°, scale 0.9–1.1, shift ±10%).
- ``strong``: a larger warp with shear, brightness and contrast jitter, Gaussian noise and
  one grey square erased (FixMatch's strong view in fixed random ranges).
- ``style``: ``light``'s warp, then the colours randomised (:func:`randomise_colours`:
  each channel scaled by ±[0.5, 1], so sometimes inverted, and shifted), with one-channel
  images made RGB first. For a source whose colours the target does not share (grey MNIST
  -> coloured MNIST-M): the classifier learns shapes in colours the source never has.
- ``randaugment`` / ``trivialaugment``: Kornia's RandAugment (2 operations at magnitude
  10) and TrivialAugment. Kornia chooses their operations once per batch (each image
  still gets its own random parameters), so a batch shares its operations; one-channel
  images go through them as grey RGB.

Each consumer has a recipe per policy. Classifiers (encoder pre-training, adapters) use
the list above. A GAN's discriminator uses DiffAugment (Zhao et al. 2020): the same
differentiable operations on real and fake images, where ``light`` is translation alone
(the GAN's augmentation before Kornia), ``strong`` adds colour and cutout, ``style`` is
``light`` (a critic blind to colour would not teach the target's colours), and a comma list
of ``color``, ``translation`` and ``cutout`` picks operations directly.

Kornia draws its random parameters from torch's global generator. A policy takes a seed
from the caller's ``torch.Generator`` and draws inside :func:`seeded`, so a run stays
reproducible and the global generator is left as it was.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from imgxfer.core.config import AUGMENT_POLICIES as POLICIES
from imgxfer.core.errors import UserError

DEFAULT = "light"  # of every built-in component that augments
DIFF_OPS = ("color", "translation", "cutout")
# The discriminator's operations per policy (DiffAugment's names).
_DIFF_POLICY = {"none": (), "light": ("translation",), "strong": ("color", "translation", "cutout"),
                # A critic that ignored colour would not teach a translator the target's.
                "style": ("translation",)}


@contextlib.contextmanager
def seeded(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run the body with torch's global generator (and the device's, on a GPU) seeded from
    ``generator``, restoring both afterwards."""
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def check_policy(name: str, what: str = "augment", *, discriminator: bool = False) -> str:
    """``name`` if it is a policy (or, for a discriminator, a DiffAugment list), else one
    sentence naming the choices."""
    if name in POLICIES or (discriminator and isinstance(name, str)
                            and _diff_ops(name) is not None):
        return name
    extra = f", or a comma list of {', '.join(DIFF_OPS)}" if discriminator else ""
    raise UserError(f"{what} must be one of {', '.join(POLICIES)}{extra}; got {name!r}.")


def _diff_ops(name: str) -> tuple[str, ...] | None:
    ops = tuple(p.strip() for p in name.split(",") if p.strip())
    return ops if all(op in DIFF_OPS for op in ops) else None


class _Gray(nn.Module):
    """Runs colour operations written for RGB on one-channel images (as grey RGB)."""

    def __init__(self, ops: nn.Module) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            return cast(torch.Tensor, self.ops(x))
        grey: torch.Tensor = self.ops(x.expand(-1, 3, -1, -1))
        return grey.mean(dim=1, keepdim=True)


def randomise_colours(x: torch.Tensor, draw: torch.Generator) -> torch.Tensor:
    """``x`` (in [-1, 1]) with each image's channels scaled by ±[0.5, 1] (the sign inverts
    the channel) and shifted by [-0.5, 0.5], drawn from ``draw`` (a CPU generator): the same
    shapes in colours the images never had. Also the translator's semantic classifier's
    style randomisation (imgxfer.components.generators.translation)."""
    b, c = x.shape[:2]
    sign = torch.randint(2, (b, c, 1, 1), generator=draw) * 2 - 1
    scale = sign * torch.empty(b, c, 1, 1).uniform_(0.5, 1, generator=draw)
    shift = torch.empty(b, c, 1, 1).uniform_(-0.5, 0.5, generator=draw)
    return (scale.to(x) * x + shift.to(x)).clamp(-1, 1)


def recolour(x: torch.Tensor, draw: torch.Generator) -> torch.Tensor:
    """:func:`randomise_colours` on [0, 1] images, one-channel ones made RGB first: the
    ``style`` policy's colours (also a dense run's, whose scenes keep their geometry)."""
    rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return (randomise_colours(rgb * 2 - 1, draw) + 1) / 2


class _Colours(nn.Module):
    """:func:`recolour`, seeded from torch's global generator, which :func:`seeded` has
    set, like Kornia's ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recolour(x, torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()))))


def _classifier_ops(name: str) -> nn.Module | None:
    import kornia.augmentation as K
    from kornia.augmentation import auto

    if name == "none":
        return None
    if name in ("light", "style"):  # style is light's warp, then colours
        light: nn.Module = K.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                                          p=1.0)
        return light if name == "light" else nn.Sequential(light, _Colours())
    if name == "strong":
        return nn.Sequential(
            K.RandomAffine(degrees=25, translate=(0.125, 0.125), scale=(0.8, 1.2),
                           shear=math.degrees(math.atan(0.3)), p=1.0),
            K.ColorJiggle(brightness=0.2, contrast=0.5, p=1.0),
            K.RandomGaussianNoise(std=0.05, p=1.0),
            K.RandomErasing(scale=(0.0625, 0.25), ratio=(1.0, 1.0), value=0.5, p=1.0))
    if name == "randaugment":
        return _Gray(auto.RandAugment(n=2, m=10))
    return _Gray(auto.TrivialAugment())


def _discriminator_ops(name: str) -> nn.Module | None:
    import kornia.augmentation as K
    from kornia.augmentation import auto

    if name in ("randaugment", "trivialaugment"):
        chosen = auto.RandAugment(n=2, m=10) if name == "randaugment" else auto.TrivialAugment()
        return _Gray(chosen)
    ops = _DIFF_POLICY.get(name) or _diff_ops(name) or ()
    layers: list[nn.Module] = []
    if "color" in ops:  # DiffAugment's brightness ±0.5 and contrast 0.5–1.5 (on [-1, 1])
        layers.append(K.ColorJiggle(brightness=0.25, contrast=0.5, p=1.0))
    if "translation" in ops:  # shifts of up to 1/8 of the size, zeros shifted in
        layers.append(K.RandomTranslate((-0.125, 0.125), (-0.125, 0.125), resample="nearest",
                                        p=1.0))
    if "cutout" in ops:  # a square of half the size set to grey
        layers.append(K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.5, p=1.0))
    return nn.Sequential(*layers) if layers else None


class Augmentation:
    """A policy for classifier training (``Augmentation("strong")``) or, with
    ``discriminator=True``, for a GAN's discriminator. Call it on a batch of [0, 1]
    images with a generator: ``policy(images, generator=g)`` returns the augmented batch
    on the images' device, differentiable with respect to the images. Its channels are
    the images' except under ``style``, which makes a non-empty one-channel batch RGB:
    code that joins two views of a batch must match their channels."""

    def __init__(self, policy: str = DEFAULT, *, discriminator: bool = False,
                 what: str = "augment") -> None:
        self.policy = check_policy(policy, what, discriminator=discriminator)
        self.ops = _discriminator_ops(policy) if discriminator else _classifier_ops(policy)
        # Classifiers preprocess [0, 1] images; DiffAugment's colour shifts may leave it.
        self.clamp = not discriminator
        self._device = torch.device("cpu")  # where the ops' buffers are

    def __call__(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        if self.ops is None or len(images) == 0:
            return images
        with seeded(generator, images.device), warnings.catch_warnings():
            # Kornia warns that auto policies' transformation matrices are not tracked.
            warnings.simplefilter("ignore", UserWarning)
            if self._device != images.device:  # once, not at every training step
                self.ops.to(images.device)
                self._device = images.device
            out: torch.Tensor = self.ops(images)
        return out.clamp(0, 1) if self.clamp else out

    def __repr__(self) -> str:
        return f"Augmentation({self.policy!r})"
