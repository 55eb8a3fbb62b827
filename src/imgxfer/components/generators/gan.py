"""The built-in ``gan`` generator: a class- and caption-conditioned GAN for small images.

It learns a target domain from few target images plus many source images and their
captions, and is sized to train in about a minute on a 2-core CPU at 32x32. Parts, and why:

- Generator (DCGAN-style): ``concat(z, class embedding, caption embedding)`` -> linear ->
  4x4 -> (nearest upsample, 3x3 conv, BatchNorm, ReLU) per doubling -> sub-pixel conv ->
  tanh. Upsample plus conv avoids the checkerboard artefacts of transposed convolutions;
  the BatchNorms take their scale and shift from the condition (conditional BatchNorm).
- Discriminator: spectrally normalised convolutions (a stable GAN without tuning), a
  projection head (Miyato & Koyama 2018) for the class *and* the caption embedding, and
  the hinge loss. Both networks own a :class:`~imgxfer.nn.text.HashedTextEncoder`
  trained with them; the domain reaches the generator only through the caption text.
- Differentiable augmentation (DiffAugment, Zhao et al. 2020) of real and fake images
  before the discriminator, because with a few target images it would otherwise memorise
  them. The default is translation only: on digits, cutout hid what tells classes apart
  and colour hid the background, and samples got worse with either.
- A mode-seeking term (Mao et al. 2019) and a discriminator with a 4x learning rate keep
  the generator from drawing a single image per class in a short budget.
- Target images are drawn with probability ``target_weight`` per batch slot, so the few
  of them are seen often enough for the domain to be learned.
- A learning rate of 4e-4 (discriminator 1.6e-3), twice DCGAN's usual 2e-4: on 4,000
  MNIST digits at 32x32 the classification accuracy score of the samples (CAS: a small
  classifier trained on them only, tested on 1,000 real held-out digits) reached 0.81
  after 600 steps and 0.92-0.95 after 1,200 (2e-4: 0.58 after 530, 0.89 after 1,200-1,270);
  it stayed at 0.95-0.96 up to 3,600 steps. 1e-3 learned no faster and was less steady.
- Cross-domain consistency (``cdc``, after Ojha et al. 2021, off by default): with few
  target images the generator ties the target style to the shots' own shapes and draws
  variations of them. This term draws the same noise and class once with a source and
  once with a target caption and asks the target images to be as similar to one another
  as the source images are (a KL divergence between their softmaxed pairwise
  correlations), so the source's variety carries over into the target style.
- Samples come from an exponential moving average (EMA) of the generator, whose
  BatchNorm statistics are recomputed after training: running averages collected by the
  raw generator do not match the averaged weights.

Two kinds of file. ``state_dict()`` is the finished sampler (``ema.*`` weights and
``meta.*`` shapes), what ``imgxfer run`` saves as ``generator.safetensors``.
``fit(checkpoint=path)`` writes the whole *training* state to ``path`` every
``checkpoint_every`` steps, whenever
:data:`~imgxfer.nn.generator_training.CHECKPOINT_SECONDS` have passed since the last write
(so a killed run loses at most that much training) and at the end, atomically (a
temporary file beside it, renamed over it, so an interrupted write leaves the previous
checkpoint whole), and ``fit(checkpoint=path, resume=True)`` continues from it. It is one
safetensors file:

- tensors ``g.*`` (the generator being trained), ``d.*`` (discriminator), ``ema.*``
  (averaged generator), ``opt_g.<i>.<name>`` / ``opt_d.<i>.<name>`` (Adam's state of
  parameter ``i``: ``step``, ``exp_avg``, ``exp_avg_sq``), ``rng.draw`` / ``rng.noise``
  (states of the batch-drawing and the noise generators), ``history.d_loss`` /
  ``history.g_loss`` (float64, one per step so far);
- metadata ``format`` = ``imgxfer.gan.training``, ``version`` = ``1``, ``step``,
  ``elapsed_s`` (training seconds so far), ``device`` (cpu, cuda, ...), ``options`` (JSON
  of :meth:`ConditionalGAN.resolved_options`) and ``data`` (JSON: ``classes``,
  ``channels``, ``images``, ``target_domain`` and a ``fingerprint`` of images, labels,
  captions and domains).

The translator's training (``--synthesis translate``) is checkpointed the same way, with
format ``imgxfer.gan.translation`` and tensors ``g.*`` (translator), ``d.*`` (critic),
``t.*`` (content classifier), ``opt_g`` / ``opt_d`` / ``opt_t``, ``rng.draw`` /
``rng.noise`` and ``history.d_loss`` / ``history.g_loss`` / ``history.content_loss``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from imgxfer.components.generators import translation
from imgxfer.core import distributed
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import Progress
from imgxfer.core.runfolder import atomic_save_tensors, read_tensors
from imgxfer.data.dataset import GeneratorData
from imgxfer.nn.augmentation import DEFAULT, Augmentation
from imgxfer.nn.generator_training import (
    Checkpointing,
    TrainingState,
    check_fit_inputs,
    check_training_metadata,
    data_signature,
    draw_weights,
    load_optimizer,
    load_progress,
    optimizer_tensors,
    progress_tensors,
    strip_prefix,
    to_model_range,
    train_steps,
)
from imgxfer.nn.text import HashedTextEncoder, token_ids
from imgxfer.plugin.protocols import FitResult

_STATE_VERSION = 1
# The training checkpoint written by ``fit(checkpoint=...)``: safetensors metadata
# ``format`` and ``version``.
TRAINING_FORMAT = "imgxfer.gan.training"
# The translator's training checkpoint (--synthesis translate): other networks, so another
# format; same version numbering and metadata.
TRANSLATION_FORMAT = "imgxfer.gan.translation"
_TRAINING_VERSION = 1
# Options that do not change what training computes, so a checkpoint may differ in them.
# content_weight and semantic_weight only act when it translates (checkpoints from before
# they existed resume too); the translator's checkpoints compare them.
_NOT_COMPARED = ("checkpoint_every", "content_weight", "semantic_weight")
# Options a translator checkpoint from before the option existed was trained with.
_TRANSLATION_BEFORE = {"semantic_weight": 0.0}
# The discriminator's learning rate is this times ``lr``.
_D_LR_RATIO = 4
# Batches of conditions used to recompute the EMA generator's BatchNorm statistics.
_STANDING_STAT_BATCHES = 16
# Cross-domain consistency: noise vectors per step, and the softmax temperature of the
# similarities (image correlations lie in [-1, 1]; at temperature 1 their softmax is
# nearly uniform whatever the images).
_CDC_BATCH = 16
_CDC_TEMPERATURE = 0.1


def _doublings(image_size: int) -> int:
    """How many times 4x4 doubles to reach ``image_size`` (a power of two, 8 to 256)."""
    n = round(math.log2(image_size)) - 2 if image_size > 0 else -1
    if not 1 <= n <= 6 or 4 * 2 ** n != image_size:
        raise UserError(f"gan: image_size must be a power of two from 8 to 256, got {image_size}.")
    return n


def _channels(width: int, doublings: int, level: int) -> int:
    """Channels at resolution ``4 * 2**level``: ``width`` at half the image size, doubling
    per further halving up to 8x ``width`` (so large images keep small layers small)."""
    channels: int = width * 2 ** min(doublings - 1 - level, 3)
    return channels


class _ConditionalNorm(nn.Module):
    """BatchNorm whose scale and shift are computed from the condition (de Vries et al.
    2017), so class and caption reach every layer and cannot be ignored by the generator."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(cond_dim, 2 * channels)
        # Start as a plain BatchNorm (scale 1, shift 0).
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(cond)[:, :, None, None].chunk(2, dim=1)
        out: torch.Tensor = self.norm(x) * (1 + scale) + shift
        return out


class _Generator(nn.Module):
    def __init__(self, *, z_dim: int, width: int, embed_dim: int, num_classes: int,
                 channels: int, image_size: int) -> None:
        super().__init__()
        n = _doublings(image_size)
        self.z_dim, self.channels = z_dim, channels
        self.class_embed = nn.Embedding(num_classes, embed_dim)
        self.text = HashedTextEncoder(embed_dim)
        cond_dim = 2 * embed_dim
        self.c0 = _channels(width, n, 0)
        self.stem = nn.Linear(z_dim + cond_dim, self.c0 * 16, bias=False)
        self.stem_norm = _ConditionalNorm(self.c0, cond_dim)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for level in range(1, n):
            cin, cout = _channels(width, n, level - 1), _channels(width, n, level)
            self.convs.append(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            self.norms.append(_ConditionalNorm(cout, cond_dim))
        # The last doubling is a sub-pixel convolution straight to the image (3x3 conv to
        # 4x the channels, then PixelShuffle): a full-resolution layer, or a convolution
        # with one output channel there, costs as much as all the others together on a CPU.
        self.to_image = nn.Sequential(
            nn.Conv2d(_channels(width, n, n - 1), channels * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, z: torch.Tensor, labels: torch.Tensor,
                text_ids: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([self.class_embed(labels), self.text(text_ids)], dim=1)
        x = self.stem(torch.cat([z, cond], dim=1)).view(-1, self.c0, 4, 4)
        x = F.relu(self.stem_norm(x, cond))
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(F.interpolate(x, scale_factor=2, mode="nearest")), cond))
        return torch.tanh(self.to_image(x))


class _Discriminator(nn.Module):
    def __init__(self, *, width: int, embed_dim: int, num_classes: int, channels: int,
                 image_size: int) -> None:
        super().__init__()
        n = _doublings(image_size)
        layers: list[nn.Module] = [
            spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        for level in range(n - 1, 0, -1):
            cin, cout = _channels(width, n, level), _channels(width, n, level - 1)
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)),
                       nn.LeakyReLU(0.2)]
        # A last 3x3 layer at 4x4 widens the features the projection compares with the
        # condition; without it, samples followed their class noticeably less often.
        feature_dim = 2 * _channels(width, n, 0)
        layers += [spectral_norm(nn.Conv2d(feature_dim // 2, feature_dim, 3, padding=1)),
                   nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(feature_dim, 1))
        self.class_embed = spectral_norm(nn.Embedding(num_classes, feature_dim))
        self.text = HashedTextEncoder(embed_dim)
        self.text_proj = spectral_norm(nn.Linear(embed_dim, feature_dim, bias=False))

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                text_ids: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))
        # Projection discriminator: unconditional score plus <condition embedding, features>.
        cond = self.class_embed(labels) + self.text_proj(self.text(text_ids))
        scores: torch.Tensor = self.linear(h).squeeze(1) + (cond * h).sum(dim=1)
        return scores


def _diff_augment(x: torch.Tensor, policy: Augmentation,
                  generator: torch.Generator) -> torch.Tensor:
    """DiffAugment on images in [-1, 1] through the discriminator's Kornia recipe
    (:mod:`imgxfer.nn.augmentation`): differentiable, so the generator learns through it."""
    if policy.ops is None:
        return x
    return policy((x + 1) / 2, generator=generator) * 2 - 1


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a generator file (see :func:`imgxfer.core.runfolder.read_tensors`)."""
    return read_tensors(path, what="checkpoint",
                        remedy="; delete it to start that training from the beginning")


@dataclass
class _CaptionPairs:
    """Per class, the distinct captions of its source and of its target images (indices
    into the sorted caption list), for the classes that have both."""

    classes: torch.Tensor
    source: dict[int, torch.Tensor]
    target: dict[int, torch.Tensor]


def _caption_pairs(labels: torch.Tensor, caption_of: torch.Tensor, domains: Sequence[str],
                   target_domain: str, num_classes: int) -> _CaptionPairs | None:
    is_target = torch.tensor([d == target_domain for d in domains])
    source, target = {}, {}
    for c in range(num_classes):
        # Tensor.unique is unannotated in torch: cast the bound method to its type.
        s = cast(Callable[[], torch.Tensor], caption_of[(labels == c) & ~is_target].unique)()
        t = cast(Callable[[], torch.Tensor], caption_of[(labels == c) & is_target].unique)()
        if len(s) and len(t):
            source[c], target[c] = s, t
    if not source:  # no class has images of both domains: nothing to keep consistent
        return None
    return _CaptionPairs(torch.tensor(sorted(source)), source, target)


def _choice(options: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return options[torch.randint(len(options), (), generator=generator)]


def relative_similarity_kl(reference: torch.Tensor, adapted: torch.Tensor) -> torch.Tensor:
    """KL(p || q) averaged over the images of a batch, where p and q are the softmaxed
    (temperature :data:`_CDC_TEMPERATURE`) correlations of each image with the others, in
    ``reference`` and in ``adapted`` (both [N, ...], image i of one paired with image i of
    the other). 0 when the two batches have the same similarity structure."""
    def similarities(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.normalize(x - x.mean(1, keepdim=True), dim=1)
        sim = x @ x.T / _CDC_TEMPERATURE
        off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        return sim[off].view(len(x), len(x) - 1)

    p = F.softmax(similarities(reference), dim=1)
    return F.kl_div(F.log_softmax(similarities(adapted), dim=1), p, reduction="batchmean")


@dataclass
class _Nets:
    """The GAN's networks in training: generator, discriminator, the generator's EMA copy
    (the sampler), their optimisers, and the random streams for drawing images and noise."""

    g: _Generator
    d: _Discriminator
    ema: _Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    draw_rng: torch.Generator
    rng: torch.Generator


@dataclass
class _Batches:
    images: torch.Tensor  # in the model's range, on the CPU
    labels: torch.Tensor
    caption_of: torch.Tensor  # each image's caption, as an index into caption_ids
    caption_ids: torch.Tensor
    weights: torch.Tensor  # draw weight per image (target shots weigh target_weight)
    pairs: _CaptionPairs | None  # for the consistency loss (cdc > 0)

    def draw(self, batch_size: int, nets: _Nets, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.multinomial(self.weights, batch_size, replacement=True,
                                  generator=nets.draw_rng)
        return (self.images[index].to(device), self.labels[index].to(device),
                self.caption_ids[self.caption_of[index]].to(device))


class ConditionalGAN:
    """Class- and caption-conditioned GAN (DCGAN-style, DiffAugment) for small images.

    Options: ``z_dim`` noise size; ``width`` channels of the generator's last and the
    discriminator's first layer (doubling per halving of resolution, up to 8x);
    ``embed_dim`` size of the class and caption embeddings; ``lr`` Adam learning rate of
    the generator (the discriminator's is 4x); ``batch_size``; ``image_size`` side of the
    square images it learns and makes (inputs are resized to it; a power of two); ``ema``
    decay of the averaged generator that samples are drawn from; ``target_weight`` share
    of each batch drawn from the target domain; ``diversity`` weight of the mode-seeking
    term (0 turns it off); ``cdc`` weight of the cross-domain consistency term (0: off);
    ``augment`` the discriminator's augmentation: a policy of :mod:`imgxfer.nn.augmentation`
    (``light``, the default, is DiffAugment's translation; ``strong`` adds colour and
    cutout) or a comma list of color, translation, cutout ("" for none);
    ``checkpoint_every`` steps between training checkpoints when ``fit`` is given a
    checkpoint path (one is also written every ``CHECKPOINT_SECONDS``, 30 s);
    ``content_weight`` weight of the class-keeping loss when it learns to translate
    (``--synthesis translate``, see :mod:`imgxfer.components.generators.translation`);
    ``semantic_weight`` weight of the semantic consistency with a frozen source classifier
    there (0: off); ``seed``.

    ``fit`` trains new networks, or resumes from its own training checkpoint;
    ``load_state_dict`` restores the sampler only.
    """

    conditioning = frozenset({"label", "text"})
    # fit(checkpoint=..., resume=...) saves and continues its training (imgxfer.plugin.protocols).
    resumable = True
    # text: sample from prompts; translate: edit source images into the target's style
    # (imgxfer.components.generators.translation). Variations of the shots it cannot draw: a GAN has
    # no way back from an image to its noise short of a latent search.
    synthesis = frozenset({"text", "translate"})
    # What `imgxfer tune` may search (imgxfer.plugin.tunable): the learning rate, how much of
    # each batch is target images, and the mode-seeking and cross-domain terms' weights.
    tunable = {"lr": ("log", 1e-4, 1e-3), "target_weight": ("float", 0.1, 0.75),
               "diversity": ("float", 0.0, 1.0), "cdc": ("float", 0.0, 1.0)}

    def __init__(self, *, z_dim: int = 64, width: int = 16, embed_dim: int = 32,
                 lr: float = 4e-4, batch_size: int = 64, image_size: int = 32,
                 ema: float = 0.999, target_weight: float = 0.25, diversity: float = 0.2,
                 cdc: float = 0.0, augment: str = DEFAULT, checkpoint_every: int = 250,
                 content_weight: float = 1.0, semantic_weight: float = 0.0,
                 seed: int = 0) -> None:
        for name, value in (("z_dim", z_dim), ("width", width), ("embed_dim", embed_dim),
                            ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
            if int(value) != value or value < 1:
                raise UserError(f"gan: {name} must be a positive integer, got {value!r}.")
        if not lr > 0:
            raise UserError(f"gan: lr must be positive, got {lr!r}.")
        if not 0 <= ema < 1:
            raise UserError(f"gan: ema must be in [0, 1), got {ema!r}.")
        if not 0 <= target_weight <= 1:
            raise UserError(f"gan: target_weight must be in [0, 1], got {target_weight!r}.")
        if not diversity >= 0:
            raise UserError(f"gan: diversity must be zero or more, got {diversity!r}.")
        if not cdc >= 0:
            raise UserError(f"gan: cdc must be zero or more, got {cdc!r}.")
        if not content_weight >= 0:
            raise UserError(f"gan: content_weight must be zero or more, got {content_weight!r}.")
        if not semantic_weight >= 0:
            raise UserError(
                f"gan: semantic_weight must be zero or more, got {semantic_weight!r}.")
        _doublings(image_size)
        policy = Augmentation(augment, discriminator=True, what="gan: augment")
        self.z_dim, self.width, self.embed_dim = int(z_dim), int(width), int(embed_dim)
        self.lr, self.batch_size, self.image_size = float(lr), int(batch_size), int(image_size)
        self.ema, self.target_weight = float(ema), float(target_weight)
        self.diversity, self.cdc = float(diversity), float(cdc)
        self.augment, self.seed = policy, int(seed)
        self.checkpoint_every = int(checkpoint_every)
        self.content_weight = float(content_weight)
        self.semantic_weight = float(semantic_weight)
        self.history: dict[str, list[float]] = {"d_loss": [], "g_loss": []}
        self._sampler: _Generator | None = None
        self._translator: translation.Translator | None = None
        self._translator_classes = 0

    # -- training ---------------------------------------------------------------------

    def resolved_options(self) -> dict[str, Any]:
        """Every option with its value (defaults included): ``ConditionalGAN(**these)``
        builds the same generator. Checkpoints record them."""
        return {"z_dim": self.z_dim, "width": self.width, "embed_dim": self.embed_dim,
                "lr": self.lr, "batch_size": self.batch_size, "image_size": self.image_size,
                "ema": self.ema, "target_weight": self.target_weight,
                "diversity": self.diversity, "cdc": self.cdc,
                "augment": self.augment.policy,
                "checkpoint_every": self.checkpoint_every,
                "content_weight": self.content_weight,
                "semantic_weight": self.semantic_weight, "seed": self.seed}

    def fit(self, data: GeneratorData, *, budget: Budget, progress: Progress,
            device: torch.device | str = "cpu", checkpoint: str | Path | None = None,
            resume: bool = False) -> FitResult:
        """Train on ``data`` until ``budget`` is spent; return the steps trained and the
        loss curves (one ``d_loss`` and one ``g_loss`` per step, also kept in
        ``self.history``).

        With ``checkpoint`` (a file path), the whole training state is saved there
        atomically every ``checkpoint_every`` steps, every ``CHECKPOINT_SECONDS`` and at
        the end (the format is
        in the module's docstring). With ``resume`` too, training continues from that file
        when it exists (new networks otherwise): same options, same data and, on the CPU,
        the same final weights as a run that was never interrupted. ``budget.steps``
        counts all steps, those before the interruption included, and so does
        ``budget.seconds``: the checkpoint records the training time already spent. A
        checkpoint from other options or other data is refused with a :class:`UserError`.
        """
        device = torch.device(device)
        checkpoint = cast("Path | None", check_fit_inputs("gan", data, checkpoint))
        if data.synthesis == "translate":
            return self._fit_translator(data, budget, progress, device, checkpoint, resume)
        self._translator = None  # one network at a time: the sampler from here on
        batches = self._batches(data)
        nets = self._networks(len(data.class_names), int(batches.images.shape[1]), device)
        state = TrainingState(
            modules={"g": nets.g, "d": nets.d, "ema": nets.ema},
            optimizers={"opt_g": nets.opt_g, "opt_d": nets.opt_d},
            generators={"draw": nets.draw_rng, "noise": nets.rng},
            history={"d_loss": [], "g_loss": []},
            data=data_signature(data, channels=int(batches.images.shape[1])),
            device=device.type, format=TRAINING_FORMAT)
        self._resume(checkpoint if resume else None, state, progress)
        ema_pairs = list(zip(nets.ema.parameters(), nets.g.parameters(), strict=True))

        def train_step(step: int) -> dict[str, float]:
            losses = self._train_step(nets, batches, step, device)
            # Warm-up of the EMA decay: early weights are poor and should fade fast.
            decay = min(self.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for averaged, current in ema_pairs:
                    averaged.lerp_(current, 1 - decay)
            for key, value in losses.items():
                state.history[key].append(value)
            return losses

        train_steps(state, train_step, budget=budget, progress=progress,
                    description="generator: gan",
                    checkpoint=self._checkpointing(checkpoint))
        self._standing_statistics(nets.ema, lambda: batches.draw(self.batch_size, nets, device),
                                  nets.rng)
        # Sampling runs on the CPU in the default memory format, as after load_state_dict,
        # so that a saved and reloaded generator gives bit-identical images.
        self._sampler = nets.ema.cpu()
        self.history = state.history
        return FitResult(state.step, state.history)

    def _batches(self, data: GeneratorData) -> _Batches:
        """The training set as the GAN draws from it: images in the model's range (kept on
        the CPU; batches travel, so a large set need not fit the device), labels, each
        image's caption as an index into the distinct captions' token ids (captions repeat,
        class x domain, so each is tokenised once), per-image draw weights, and the
        caption pairs of the consistency loss."""
        labels = data.labels.long()
        captions = sorted(set(data.captions))
        position = {c: i for i, c in enumerate(captions)}
        caption_of = torch.tensor([position[c] for c in data.captions])
        pairs = _caption_pairs(labels, caption_of, data.domains, data.target_domain,
                               len(data.class_names)) if self.cdc > 0 else None
        return _Batches(self._prepare(data.images), labels, caption_of, token_ids(captions),
                        draw_weights(data.domains, data.target_domain, self.target_weight),
                        pairs)

    def _networks(self, num_classes: int, channels: int, device: torch.device) -> _Nets:
        """Fresh networks from the seed, their EMA copy, optimisers and random streams."""
        shape = dict(num_classes=num_classes, channels=channels, image_size=self.image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen_net = _Generator(z_dim=self.z_dim, width=self.width, embed_dim=self.embed_dim,
                                 **shape).to(device)
            disc = _Discriminator(width=self.width, embed_dim=self.embed_dim, **shape).to(device)
        sampler = copy.deepcopy(gen_net).eval().requires_grad_(False)
        # channels_last makes these small convolutions 1.5-3x faster on a CPU (oneDNN).
        gen_net = gen_net.to(memory_format=torch.channels_last)
        disc = disc.to(memory_format=torch.channels_last)
        # Two time-scale update rule (Heusel et al. 2017): a discriminator with a larger
        # step keeps up with the generator in one update each, which the short CPU budget
        # needs; with equal steps samples collapsed and ignored their class more often.
        opt_g = torch.optim.Adam(gen_net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=_D_LR_RATIO * self.lr, betas=(0.5, 0.999))
        seed = self.seed + distributed.seed_offset()  # each process its own batches
        return _Nets(gen_net, disc, sampler, opt_g, opt_d, torch.Generator().manual_seed(seed),
                     torch.Generator(device=device).manual_seed(seed))

    def _train_step(self, nets: _Nets, batches: _Batches, step: int,
                    device: torch.device) -> dict[str, float]:
        """One discriminator and one generator update; the two losses."""
        gen_net, disc, rng = nets.g, nets.d, nets.rng
        real, y, text = batches.draw(self.batch_size, nets, device)
        # Fakes come in pairs with the same condition and different noise, for the
        # mode-seeking term below.
        half = len(y) // 2
        y_fake = torch.cat([y[:half], y[:len(y) - half]])
        text_fake = torch.cat([text[:half], text[:len(y) - half]])
        z = torch.randn(len(y), self.z_dim, generator=rng, device=device)
        # One generator pass serves both updates: detached for the discriminator,
        # then through the freshly updated discriminator for the generator.
        fake = gen_net(z, y_fake, text_fake)

        disc.requires_grad_(True)
        # Real and fake in one batch: one larger convolution is cheaper than two.
        both = _diff_augment(torch.cat([real, fake.detach()]), self.augment, rng)
        scores = disc(both, torch.cat([y, y_fake]), torch.cat([text, text_fake]))
        d_real, d_fake = scores[:len(y)], scores[len(y):]
        d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        nets.opt_d.zero_grad(set_to_none=True)
        distributed.backward_step(d_loss, nets.opt_d)

        # Frozen discriminator: no weight gradients are computed for it here.
        disc.requires_grad_(False)
        g_loss = -disc(_diff_augment(fake, self.augment, rng), y_fake, text_fake).mean()
        g_total = g_loss
        if self.diversity > 0 and half > 0:
            # Mode seeking (Mao et al. 2019): reward images that differ as much as
            # their noise does. Without it the generator drew one image per class.
            spread = ((fake[:half] - fake[half:2 * half]).abs().mean()
                      / (z[:half] - z[half:2 * half]).abs().mean())
            g_total = g_loss + self.diversity / (spread + 1e-5)
        if batches.pairs is not None:
            g_total = g_total + self.cdc * self._consistency(
                gen_net, batches.pairs, batches.caption_ids, nets.draw_rng, rng, device)
        nets.opt_g.zero_grad(set_to_none=True)
        distributed.backward_step(g_total, nets.opt_g)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    # -- training checkpoints -----------------------------------------------------------

    def _fit_translator(self, data: GeneratorData, budget: Budget, progress: Progress,
                        device: torch.device, checkpoint: Path | None = None,
                        resume: bool = False) -> FitResult:
        """``--synthesis translate``: train a source-to-target translator (PixelDA) with
        this GAN's width, noise size, learning rate, batch size and seed; checkpointed and
        resumed like the sampler's training (format ``imgxfer.gan.translation``)."""
        prepared = translation.TranslationData.from_generator_data(data, self.image_size)
        signature = data_signature(data, channels=int(prepared.target.shape[1]))

        def restore(state: TrainingState) -> None:
            state.format = TRANSLATION_FORMAT
            self._resume(checkpoint if resume else None, state, progress)

        result = translation.fit_translator(
            prepared, width=self.width, z_dim=self.z_dim, lr=self.lr,
            batch_size=self.batch_size, content_weight=self.content_weight,
            diversity=self.diversity, seed=self.seed,
            budget=budget, progress=progress, device=device,
            semantic_weight=self.semantic_weight,
            checkpoint=self._checkpointing(checkpoint),
            restore=restore, data_signature=signature)
        self._translator, self._sampler = result.translator.cpu().requires_grad_(False), None
        self._translator_classes = len(data.class_names)
        self.history = result.history
        return FitResult(result.steps, result.history)

    def edit(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
             prompts: Sequence[str], *, seed: int = 0,
             device: torch.device | str = "cpu") -> torch.Tensor:
        """``--synthesis translate``: each image in the target's style (its class kept by
        training, so ``labels`` and ``prompts`` are not read), on the CPU like ``sample``."""
        if self._translator is None:
            raise UserError("gan: this generator was not trained to translate images "
                            "(train it with --synthesis translate); it draws images from "
                            "prompts with sample.")
        return translation.translate(self._translator, images, seed=seed,
                                     device=torch.device("cpu"))

    def _checkpointing(self, path: Path | None) -> Checkpointing | None:
        """How the training loop saves to ``path`` (none without a path)."""
        if path is None:
            return None
        return Checkpointing(path, self._save_training, self.checkpoint_every)

    def _resume(self, path: Path | None, state: TrainingState, progress: Progress) -> None:
        """Continue from the checkpoint at ``path`` when there is one (new networks
        otherwise)."""
        if path is not None and path.exists():
            self._load_training(path, state)
            progress.log(f"gan: resumed from {path} at step {state.step}")

    def _save_training(self, path: str | Path, state: TrainingState) -> None:
        """Write ``state`` to ``path`` atomically, as the module docstring describes; its
        ``format`` says whose training it is (sampler or translator)."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in state.modules.items():
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        for prefix, optimizer in state.optimizers.items():
            tensors.update(optimizer_tensors(prefix, optimizer))
        tensors.update(progress_tensors(state.generators, state.history))
        metadata = {"format": state.format or TRAINING_FORMAT,
                    "version": str(_TRAINING_VERSION),
                    "step": str(state.step), "elapsed_s": repr(float(state.elapsed)),
                    "device": state.device,
                    "options": json.dumps(self.resolved_options(), sort_keys=True),
                    "data": json.dumps(state.data, sort_keys=True)}
        atomic_save_tensors(Path(path), tensors, metadata)

    def _load_training(self, path: Path, state: TrainingState) -> None:
        """Restore ``state`` (networks, optimisers, random generators, step, history) from
        a checkpoint written by :meth:`_save_training`, after checking that it comes from
        the same options and data."""
        tensors, meta = read_checkpoint(path)
        where = f"the gan checkpoint {str(path)!r}"
        format = state.format or TRAINING_FORMAT
        # content_weight and semantic_weight change what the translator learns, not the
        # sampler; a translator checkpoint older than an option had its default.
        translating = format == TRANSLATION_FORMAT
        ignored = ("checkpoint_every",) if translating else _NOT_COMPARED
        ours = {k: v for k, v in self.resolved_options().items() if k not in ignored}
        values = check_training_metadata(
            meta, where=where, format=format, version=_TRAINING_VERSION, options=ours,
            data=state.data, device=state.device, numbers={"step": int, "elapsed_s": float},
            before=_TRANSLATION_BEFORE if translating else None)
        step, elapsed = values["step"], values["elapsed_s"]
        try:
            for prefix, module in state.modules.items():
                module.load_state_dict(strip_prefix(tensors, prefix + "."))
            for prefix, optimizer in state.optimizers.items():
                load_optimizer(tensors, prefix, optimizer)
            history = load_progress(tensors, state.generators, list(state.history))
        except (KeyError, RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[-1].strip() if str(error).strip() else ""
            raise UserError(f"{where} does not fit this generator: {first or error!r}") from None
        if any(len(v) != step for v in history.values()):
            raise UserError(f"{where} is damaged: its loss history does not have {step} steps.")
        state.step, state.elapsed, state.history = step, elapsed, history

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> ``image_size`` squares in [-1, 1] (the tanh range)."""
        return to_model_range(images, self.image_size)

    def _consistency(self, gen_net: _Generator, pairs: _CaptionPairs,
                     caption_ids: torch.Tensor, draw_rng: torch.Generator,
                     rng: torch.Generator, device: torch.device) -> torch.Tensor:
        """The cross-domain consistency loss on one batch of noise (see the module
        docstring): one class, one source and one target caption of it, so that the
        similarities are those the noise makes within the class (across classes the
        target images differ anyway); source images are the reference (no gradient)."""
        c = int(_choice(pairs.classes, draw_rng))
        source, target = _choice(pairs.source[c], draw_rng), _choice(pairs.target[c], draw_rng)
        z = torch.randn(_CDC_BATCH, self.z_dim, generator=rng, device=device)
        classes = torch.full((_CDC_BATCH,), c, device=device)
        with torch.no_grad():
            reference = gen_net(z, classes, caption_ids[source].expand(_CDC_BATCH, -1).to(device))
        adapted = gen_net(z, classes, caption_ids[target].expand(_CDC_BATCH, -1).to(device))
        return relative_similarity_kl(reference, adapted)

    def _standing_statistics(self, sampler: _Generator,
                             draw: Callable[[], tuple[torch.Tensor, ...]],
                             rng: torch.Generator) -> None:
        """Recompute the EMA generator's BatchNorm statistics over training conditions."""
        norms = [m for m in sampler.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        sampler.train()
        with torch.no_grad():
            for _ in range(_STANDING_STAT_BATCHES):
                _, y, text = draw()
                sampler(torch.randn(len(y), self.z_dim, generator=rng, device=y.device), y, text)
        for m in norms:
            m.momentum = 0.1
        sampler.eval()

    # -- sampling ---------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], labels: Sequence[int] | torch.Tensor,
               n: int | None = None, *, seed: int = 0,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``[N, C, H, W]`` in [0, 1] on the CPU, one per prompt (``n`` per prompt
        when given), from the averaged generator; the same ``seed`` gives the same images.
        The generator is small, so it samples on the CPU whatever ``device`` is: the noise
        and the images are then the same on every machine."""
        if self._sampler is None and self._translator is not None:
            raise UserError("gan: this generator was trained to translate images "
                            "(--synthesis translate); it draws no images from prompts.")
        if self._sampler is None:
            raise RuntimeError("generator is not trained")
        prompts = list(prompts)
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if len(labels) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
        num_classes = self._sampler.class_embed.num_embeddings
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
            raise ValueError(f"labels must be class indices in [0, {num_classes})")
        if n is not None:
            prompts = [p for p in prompts for _ in range(n)]
            labels = labels.repeat_interleave(n)
        z = torch.randn(len(labels), self.z_dim, generator=torch.Generator().manual_seed(seed))
        out = [torch.empty(0, *self._image_shape())]
        for start in range(0, len(labels), 512):  # bounded memory for large requests
            part = slice(start, start + 512)
            out.append(self._sampler(z[part], labels[part], token_ids(prompts[part])))
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)

    def _image_shape(self) -> tuple[int, int, int]:
        assert self._sampler is not None
        return (self._sampler.channels, self.image_size, self.image_size)

    # -- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged generator plus ``meta.*`` shapes and options that rebuild it (or,
        trained to translate, the translator: ``translator.*`` and ``meta.translator``)."""
        if self._translator is not None:
            return {"meta.version": torch.tensor([_STATE_VERSION]),
                    **translation.translator_state(self._translator, self._translator_classes)}
        if self._sampler is None:
            raise RuntimeError("generator is not trained")
        state = {f"ema.{k}": v.detach().cpu().contiguous()
                 for k, v in self._sampler.state_dict().items()}
        state.update({
            "meta.version": torch.tensor([_STATE_VERSION]),
            "meta.image_shape": torch.tensor(self._image_shape()),
            "meta.num_classes": torch.tensor([self._sampler.class_embed.num_embeddings]),
            "meta.architecture": torch.tensor([self.z_dim, self.width, self.embed_dim]),
        })
        return state

    @property
    def num_classes(self) -> int | None:
        """Classes the sampler draws (``None`` before ``fit`` or ``load_state_dict``)."""
        if self._translator is not None:
            return self._translator_classes
        return None if self._sampler is None else self._sampler.class_embed.num_embeddings

    @staticmethod
    def options_from_state(state: dict[str, torch.Tensor]) -> dict[str, int]:
        """The architecture options a :meth:`state_dict` was saved with (``z_dim``,
        ``width``, ``embed_dim``, ``image_size``), so a loader can rebuild the generator
        when the options it recorded leave them at defaults that may since have changed.
        Empty for a file without the ``meta.*`` entries."""
        if translation.META in state:
            shape = translation.translator_shape(state)
            return {k: shape[k] for k in ("z_dim", "width", "image_size")}
        if "meta.architecture" not in state or "meta.image_shape" not in state:
            return {}
        z_dim, width, embed_dim = (int(v) for v in state["meta.architecture"])
        return {"z_dim": z_dim, "width": width, "embed_dim": embed_dim,
                "image_size": int(state["meta.image_shape"][1])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a sampler saved by :meth:`state_dict` with the same architecture options."""
        if translation.META in state:
            return self._load_translator(state)
        needed = ("meta.version", "meta.image_shape", "meta.num_classes", "meta.architecture")
        if any(k not in state for k in needed):
            raise UserError("this checkpoint was not saved by the gan generator "
                            "(it lacks the meta.* entries).")
        if int(state["meta.version"][0]) != _STATE_VERSION:
            raise UserError("this gan checkpoint has format version "
                            f"{int(state['meta.version'][0])}; this imgxfer reads version "
                            f"{_STATE_VERSION}.")
        channels, height, _ = (int(v) for v in state["meta.image_shape"])
        saved = dict(zip(("z_dim", "width", "embed_dim"),
                         (int(v) for v in state["meta.architecture"]), strict=True), image_size=height)
        ours = dict(z_dim=self.z_dim, width=self.width, embed_dim=self.embed_dim,
                    image_size=self.image_size)
        if saved != ours:
            differ = ", ".join(f"{k}={saved[k]} (not {ours[k]})"
                               for k in saved if saved[k] != ours[k])
            raise UserError(f"this gan checkpoint was trained with {differ}; "
                            "create the generator with the same options to load it.")
        sampler = _Generator(z_dim=self.z_dim, width=self.width, embed_dim=self.embed_dim,
                             num_classes=int(state["meta.num_classes"][0]), channels=channels,
                             image_size=self.image_size)
        weights = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
        try:
            sampler.load_state_dict(weights)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise UserError(f"this gan checkpoint does not fit the generator: {first}") from None
        self._sampler, self._translator = sampler.eval().requires_grad_(False), None

    def _load_translator(self, state: dict[str, torch.Tensor]) -> None:
        shape = translation.translator_shape(state)
        ours = {"z_dim": self.z_dim, "width": self.width, "image_size": self.image_size}
        differ = ", ".join(f"{k}={shape[k]} (not {v})" for k, v in ours.items() if shape[k] != v)
        if differ:
            raise UserError(f"this gan translator was trained with {differ}; create the "
                            "generator with the same options to load it.")
        try:
            self._translator = translation.load_translator(state)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise UserError(f"this gan checkpoint does not fit the generator: {first}") from None
        self._translator_classes, self._sampler = shape["classes"], None
