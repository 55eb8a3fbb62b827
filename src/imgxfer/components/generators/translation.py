"""Pixel-level domain adaptation, the built-in ``gan``'s ``--synthesis translate``.

After PixelDA (Bousmalis et al. 2017, "Unsupervised Pixel-Level Domain Adaptation with
Generative Adversarial Networks"): a generator ``G(x, z)`` turns a labelled source image
``x`` and noise ``z`` into an image of the target domain, so every source label becomes a
labelled target-style image, with no target label needed. Three networks train together:

- the translator ``G``: the source image (its channels matched to the target's) with the
  noise as one extra channel, a stride-2 convolution, residual blocks at half resolution
  (cheap on a CPU), an upsampling convolution and ``tanh``;
- a critic ``D`` (spectrally normalised convolutions, hinge loss) that tells real target
  images (unlabelled ones and the labelled shots) from translated ones: it makes the
  output look like the target domain;
- a content classifier ``T`` trained with the source labels on source images, translated
  images and the target shots; ``G`` is also trained to make ``T`` recognise the source
  label in its output, which keeps the class of each translated image (PixelDA's task
  loss). Without it nothing ties the output's class to the input's.

``semantic_weight`` > 0 adds CyCADA's semantic consistency (Hoffman et al. 2018): a
second classifier ``S``, trained on source images only and then frozen, must also
recognise the source label in each translation. ``T`` learns from the translations, so it
can learn to read digits that drift; a frozen ``S`` cannot, which is what holds the
content on long budgets. ``S`` is trained on source images with their style randomised
(colours scaled, inverted and shifted, a target image blended in), so that it judges the
shape and not the source's colours, which the translator is meant to change.

Its state is saved with the ``gan`` as ``translator.*`` tensors (see
:class:`~imgxfer.components.generators.gan.ConditionalGAN`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from imgxfer.core import distributed
from imgxfer.core.budget import Budget
from imgxfer.core.progress import Progress
from imgxfer.data.dataset import GeneratorData
from imgxfer.nn.augmentation import randomise_colours
from imgxfer.nn.generator_training import Checkpointing, TrainingState, to_model_range, train_steps
from imgxfer.nn.preprocess import match_channels

# Residual blocks of the translator, at half the image size.
BLOCKS = 4
# Steps (and learning rate) of the frozen semantic classifier's training on style-randomised
# source images, before the translator's first step. On mnist -> mnist-m (batch 128,
# benchmarks/semantic_judge.py, docs/benchmarks.md) 500 steps leave it at 0.74 on the
# source images themselves and 2,000 reach 0.94 (0.79 on the target); 2,000 take about
# two minutes on one core.
SEMANTIC_STEPS = 2000
SEMANTIC_LR = 1e-3


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(channels, channels),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Translator(nn.Module):
    """``G(x, z)``: images in [-1, 1] with ``channels`` channels and noise [B, z_dim] ->
    translated images in [-1, 1], same size and channels."""

    def __init__(self, *, channels: int, image_size: int, width: int, z_dim: int) -> None:
        super().__init__()
        self.channels, self.image_size, self.z_dim = channels, image_size, z_dim
        self.noise = nn.Linear(z_dim, image_size * image_size)
        self.net = nn.Sequential(
            *_conv_bn(channels + 1, width), *_conv_bn(width, 2 * width, stride=2),
            *[_Residual(2 * width) for _ in range(BLOCKS)],
            nn.Upsample(scale_factor=2, mode="nearest"), *_conv_bn(2 * width, width),
            nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh())

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        noise = self.noise(z).view(len(z), 1, self.image_size, self.image_size)
        out: torch.Tensor = self.net(torch.cat([x, noise], 1))
        return out


class _Critic(nn.Module):
    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((channels, width), (width, 2 * width), (2 * width, 4 * width)):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(4 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.head(self.features(x).sum((2, 3)))
        return scores.flatten()


def _content_classifier(channels: int, width: int, classes: int) -> nn.Module:
    return nn.Sequential(*_conv_bn(channels, width), nn.MaxPool2d(2),
                         *_conv_bn(width, 2 * width), nn.MaxPool2d(2),
                         *_conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4 * width, classes))


@dataclass
class TranslationData:
    """What translation trains on, in [-1, 1] at the model size and the target's channels:
    labelled source images, labelled target shots and all target images (critic)."""

    source: torch.Tensor
    source_labels: torch.Tensor
    shots: torch.Tensor
    shot_labels: torch.Tensor
    target: torch.Tensor
    classes: int

    @classmethod
    def from_generator_data(cls, data: GeneratorData, size: int) -> TranslationData:
        is_target = torch.tensor([d == data.target_domain for d in data.domains])
        unlabelled = data.unlabelled if data.unlabelled is not None else data.images[:0]
        channels = int(unlabelled.shape[1]) if len(unlabelled) else int(data.images.shape[1])
        prepare: Callable[[torch.Tensor], torch.Tensor] = (  # noqa: E731
            lambda x: to_model_range(match_channels(x.float(), channels), size))
        shots = prepare(data.images[is_target])
        source = prepare(data.images[~is_target])
        return cls(source, data.labels[~is_target].long(), shots,
                   data.labels[is_target].long(),
                   torch.cat([prepare(unlabelled), shots]) if len(unlabelled) else shots,
                   len(data.class_names))


@dataclass
class TranslationResult:
    translator: Translator
    steps: int
    history: dict[str, list[float]] = field(default_factory=dict)


def fit_translator(data: TranslationData, *, width: int, z_dim: int, lr: float,
                   batch_size: int, content_weight: float, diversity: float, seed: int,
                   budget: Budget, progress: Progress, device: torch.device,
                   semantic_weight: float = 0.0,
                   checkpoint: Checkpointing | None = None,
                   restore: Callable[[TrainingState], None] | None = None,
                   data_signature: dict[str, Any] | None = None) -> TranslationResult:
    """Train translator, critic and content classifier together until ``budget`` is
    spent (the critic learns 4x faster, as in the ``gan``). Each source image of a batch
    is translated twice with different noise, for the mode-seeking term (``diversity``;
    without it the noise is ignored and every image gets the same kind of background).
    ``semantic_weight`` > 0 first trains the frozen semantic classifier (see the module's
    text). ``restore`` prepares the state before the first step (the caller's checkpoint
    ``format``; an interrupted training to continue), ``checkpoint`` saves it as
    :func:`~imgxfer.nn.generator_training.train_steps` does, and ``data_signature`` is what
    the checkpoint records of the data."""
    channels, size = int(data.target.shape[1]), int(data.target.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Translator(channels=channels, image_size=size, width=width, z_dim=z_dim).to(device)
        d = _Critic(channels, width).to(device)
        t = _content_classifier(channels, width, data.classes).to(device)
    # channels_last makes these small convolutions (and max pooling) several times
    # faster on a CPU (oneDNN); the weights are the same numbers in another layout.
    g = g.to(memory_format=torch.channels_last)
    d = d.to(memory_format=torch.channels_last)
    t = t.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=4 * lr, betas=(0.5, 0.999))
    opt_t = torch.optim.Adam(t.parameters(), lr=lr, betas=(0.5, 0.999))
    semantic = _semantic_network(data, width, seed, device) if semantic_weight > 0 else None
    shared_seed = seed
    seed += distributed.seed_offset()  # each process its own batches and noise
    draw = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed)
    state = TrainingState(
        modules={"g": g, "d": d, "t": t, **({"s": semantic} if semantic is not None else {})},
        optimizers={"opt_g": opt_g, "opt_d": opt_d, "opt_t": opt_t},
        generators={"draw": draw, "noise": noise},
        history={name: [] for name in ("d_loss", "g_loss", "content_loss")
                 + (("semantic_loss",) if semantic is not None else ())},
        data=dict(data_signature or {}), device=device.type)
    if restore is not None:
        restore(state)
    if semantic is not None:
        if state.step == 0:  # a resumed training restored the trained one
            _train_semantic(semantic, data, batch_size=2 * batch_size, seed=shared_seed,
                            progress=progress, device=device)
        semantic.eval().requires_grad_(False)

    def train_step(step: int) -> dict[str, float]:
        half = max(1, batch_size // 2)
        src = torch.randint(len(data.source), (half,), generator=draw).repeat(2)
        tgt = torch.randint(len(data.target), (len(src),), generator=draw)
        x, y = data.source[src].to(device), data.source_labels[src].to(device)
        real = data.target[tgt].to(device)
        z = torch.randn(len(src), z_dim, generator=noise, device=device)
        fake = g(x, z)
        extra = diversity * _mode_seeking(fake, z) if diversity else None
        if semantic is not None:
            kept = F.cross_entropy(semantic(fake), y)
            extra = semantic_weight * kept + (0 if extra is None else extra)
        losses = _update(g, d, t, (opt_g, opt_d, opt_t), x, y, real, fake, data,
                         content_weight, draw, device, extra)
        if semantic is not None:
            losses["semantic_loss"] = kept.item()
        for name, value in losses.items():
            state.history[name].append(value)
        # Every loss, the generator's first (what the progress bar has room for): a
        # tracker logs each (imgxfer.run.tracking).
        return {"g_loss": losses["g_loss"], **losses}

    train_steps(state, train_step, budget=budget, progress=progress,
                description="generator: gan (translate)", checkpoint=checkpoint)
    # Translation runs in the default layout, as after load_state_dict, so a saved and
    # reloaded translator gives bit-identical images.
    g = g.to(memory_format=torch.contiguous_format)
    return TranslationResult(g.eval(), state.step, state.history)


def _randomise_style(x: torch.Tensor, target: torch.Tensor,
                     draw: torch.Generator) -> torch.Tensor:
    """``x`` (in [-1, 1]) with its colours randomised (:func:`randomise_colours`), then
    blended with a random ``target`` image (weight [0, 0.5]): the same shapes in colours
    and textures the source never has."""
    b = len(x)
    styled = randomise_colours(x, draw)
    mix = torch.empty(b, 1, 1, 1).uniform_(0, 0.5, generator=draw)
    background = target[torch.randint(len(target), (b,), generator=draw)]
    return (1 - mix.to(x)) * styled + mix.to(x) * background.to(x)


def _semantic_network(data: TranslationData, width: int, seed: int,
                      device: torch.device) -> nn.Module:
    """The untrained classifier of CyCADA's semantic consistency (seeded apart from the
    translator's networks)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        s = _content_classifier(int(data.target.shape[1]), width, data.classes).to(device)
    return s.to(memory_format=torch.channels_last)


def _train_semantic(s: nn.Module, data: TranslationData, *, batch_size: int, seed: int,
                    progress: Progress, device: torch.device) -> None:
    """``SEMANTIC_STEPS`` steps of ``s`` on style-randomised source images (their labels
    only), before the translator's first step; the same in every process (its gradients
    are averaged like the others')."""
    draw = torch.Generator().manual_seed(seed + 1)  # not the translator's batches
    s.train()
    opt = torch.optim.Adam(s.parameters(), lr=SEMANTIC_LR)
    with progress.task("generator: gan (semantic classifier)", SEMANTIC_STEPS) as task:
        for _ in range(SEMANTIC_STEPS):
            pick = torch.randint(len(data.source), (batch_size,), generator=draw)
            x = _randomise_style(data.source[pick], data.target, draw).to(device)
            loss = F.cross_entropy(s(x), data.source_labels[pick].to(device))
            opt.zero_grad(set_to_none=True)
            distributed.backward_step(loss, opt)
            task.advance(1, loss=loss.item())


def _mode_seeking(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mao et al. 2019: small when the two translations of one image (first and second
    half of the batch) differ as much as their noise does."""
    half = len(fake) // 2
    spread = ((fake[:half] - fake[half:2 * half]).abs().mean()
              / (z[:half] - z[half:2 * half]).abs().mean())
    return 1 / (spread + 1e-5)


def _update(g: nn.Module, d: nn.Module, t: nn.Module,
            optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer,
                              torch.optim.Optimizer], x: torch.Tensor, y: torch.Tensor,
            real: torch.Tensor, fake: torch.Tensor, data: TranslationData,
            content_weight: float, draw: torch.Generator, device: torch.device,
            extra: torch.Tensor | None = None) -> dict[str, float]:
    """One step of each network: critic (hinge), content classifier (source, translated
    and shot labels), then translator (fool the critic, keep the class for ``T``)."""
    opt_g, opt_d, opt_t = optimizers
    d.requires_grad_(True)
    scores = d(torch.cat([real, fake.detach()]))
    d_loss = F.relu(1 - scores[:len(real)]).mean() + F.relu(1 + scores[len(real):]).mean()
    opt_d.zero_grad(set_to_none=True)
    distributed.backward_step(d_loss, opt_d)

    t.requires_grad_(True)
    inputs, labels = [x, fake.detach()], [y, y]
    if len(data.shots):
        pick = torch.randint(len(data.shots), (min(len(data.shots), len(x)),), generator=draw)
        inputs.append(data.shots[pick].to(device))
        labels.append(data.shot_labels[pick].to(device))
    t_loss = F.cross_entropy(t(torch.cat(inputs)), torch.cat(labels))
    opt_t.zero_grad(set_to_none=True)
    distributed.backward_step(t_loss, opt_t)

    d.requires_grad_(False)
    t.requires_grad_(False)
    adversarial = -d(fake).mean()
    content = F.cross_entropy(t(fake), y)
    opt_g.zero_grad(set_to_none=True)
    total = adversarial + content_weight * content
    distributed.backward_step(total if extra is None else total + extra, opt_g)
    return {"d_loss": d_loss.item(), "g_loss": adversarial.item(), "content_loss": content.item()}


@torch.inference_mode()
def translate(translator: Translator, images: torch.Tensor, *, seed: int,
              device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Translated images in [0, 1] on the CPU, at the translator's size and channels."""
    noise = torch.Generator().manual_seed(seed)
    x = to_model_range(match_channels(images.float(), translator.channels),
                       translator.image_size)
    z = torch.randn(len(x), translator.z_dim, generator=noise)
    translator.eval()
    out = [translator(x[i:i + batch_size].to(device), z[i:i + batch_size].to(device)).cpu()
           for i in range(0, len(x), batch_size)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1) if out else x[:0]


# state_dict() entries of a translator: "translator.<weight>" and this shape record,
# [channels, image_size, width, z_dim, classes].
META = "meta.translator"


def translator_state(translator: Translator, classes: int) -> dict[str, torch.Tensor]:
    state = {f"translator.{k}": v.detach().cpu().contiguous()
             for k, v in translator.state_dict().items()}
    width = translator.net[0].out_channels
    state[META] = torch.tensor([translator.channels, translator.image_size, width,
                                translator.z_dim, classes])
    return state


def translator_shape(state: dict[str, torch.Tensor]) -> dict[str, int]:
    channels, image_size, width, z_dim, classes = (int(v) for v in state[META])
    return {"channels": channels, "image_size": image_size, "width": width, "z_dim": z_dim,
            "classes": classes}


def load_translator(state: dict[str, torch.Tensor]) -> Translator:
    """The translator a :func:`translator_state` holds (weights that do not fit are a
    ``RuntimeError`` for the caller to word)."""
    shape = translator_shape(state)
    translator = Translator(channels=shape["channels"], image_size=shape["image_size"],
                            width=shape["width"], z_dim=shape["z_dim"])
    prefix = "translator."
    translator.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                if k.startswith(prefix)})
    return translator.eval().requires_grad_(False)
