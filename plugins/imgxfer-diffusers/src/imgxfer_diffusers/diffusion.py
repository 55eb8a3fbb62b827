"""The ``diffusion`` generator: a small class-, domain- and caption-conditioned denoising
diffusion model, trained from scratch in the run and built from diffusers' parts.

Parts, and why:

- Denoiser: :class:`diffusers.UNet2DModel` with three resolution levels (``width``,
  2 ``width``, 2 ``width`` channels; self-attention only at the lowest level, where it is
  cheap) and ``class_embed_type="identity"``: the condition embedding computed here is
  added to the timestep embedding, which reaches every residual block. The condition is
  ``embedding[class + num_classes * is_target] + linear(caption embedding)``: class and
  domain (source or target) as one learned token, and the caption through a
  :class:`~imgxfer.nn.text.HashedTextEncoder` trained with the model (so the
  attributes a captioner writes, such as stroke width or size, condition the images).
- Classifier-free guidance (Ho & Salimans 2022): with probability ``cond_dropout`` a
  training example gets the extra *null* token and no caption; sampling mixes the
  conditional and unconditional noise predictions with ``guidance_scale`` (1: no
  guidance, and half the cost).
- Training: :class:`diffusers.DDPMScheduler` (epsilon prediction, cosine noise schedule,
  which suits small images better than the linear one) adds noise at a uniformly drawn
  timestep and the network learns to predict it (mean squared error, AdamW).
- Samples come from an exponential moving average of the weights
  (:class:`diffusers.training_utils.EMAModel`, decay warming up as ``(1+s)/(10+s)`` to
  ``ema``), drawn in a plain loop over :class:`diffusers.DDIMScheduler` (deterministic,
  ``eta=0``) or :class:`diffusers.DPMSolverMultistepScheduler` with ``sample_steps``
  steps. diffusers' ``DDPMPipeline`` takes no class labels, hence the own loop.
- The model works at ``image_size`` (inputs are resized to it) and samples are resized to
  the size of the training images, in their channel count: on a CPU a 16x16 model trains
  about four times faster than a 32x32 one.

Target images (those of ``data.target_domain``) are drawn with probability
``target_weight`` per batch slot. Samples are always drawn with the target-domain token:
this generator makes target images; the prompt's words condition them through the caption
embedding.

Image-to-image (``edit``, for ``--synthesis shots`` and ``translate``) is SDEdit (Meng et
al. 2022), as DA-Fusion (Trabucco et al. 2023) uses it: the input image is noised to the
timestep ``strength`` of the way along the sampling schedule and denoised from there, so
its layout (the digit, the object) survives and its appearance is redrawn. ``shots``
denoises with the target class token and the prompt, guided. For ``translate`` the model
also learns the unlabelled target images (``data.unlabelled``) under the null token, and
only target images have their condition dropped, so the null token means "a target-domain
image"; translation denoises a source image with it (the class is kept by the noised
input, not by a class token: at 0 shots no target class token was ever trained).

``state_dict()`` is the finished sampler (``ema.*`` weights, ``meta.*`` shapes and
architecture). ``fit(checkpoint=path)`` writes the whole training state atomically to one
safetensors file every ``checkpoint_every`` steps, every 30 s and at the end, and
``fit(checkpoint=path, resume=True)`` continues from it (same options and data, else a
:class:`~imgxfer.core.errors.UserError`). The file holds tensors ``net.*`` (the network being
trained), ``ema.<i>`` (averaged parameters), ``opt.<i>.<name>`` (AdamW's state),
``rng.draw`` / ``rng.noise`` (generator states), ``history.loss`` (float64, one per
step) and metadata ``format`` = ``imgxfer.diffusion.training``, ``version``, ``step``,
``ema_step``, ``elapsed_s``, ``device``, ``options`` and ``data`` (JSON).

diffusers is imported only when a generator is built, not when this module is.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgxfer import (
    Budget,
    Checkpointing,
    FitResult,
    GeneratorData,
    HashedTextEncoder,
    Progress,
    TrainingState,
    UserError,
    atomic_save_tensors,
    backward_step,
    check_fit_inputs,
    check_training_metadata,
    data_signature,
    draw_weights,
    load_optimizer,
    load_progress,
    optimizer_tensors,
    progress_tensors,
    read_tensors,
    seed_offset,
    strip_prefix,
    to_model_range,
    token_ids,
    train_steps,
)

__all__ = ["DiffusionGenerator", "TRAINING_FORMAT", "SAMPLERS"]

_STATE_VERSION = 1
TRAINING_FORMAT = "imgxfer.diffusion.training"
_TRAINING_VERSION = 1
# Options that do not change what training computes, so a checkpoint may differ in them.
_NOT_COMPARED = ("checkpoint_every", "sample_steps", "guidance_scale", "sampler", "strength")
SAMPLERS = ("ddim", "dpm")
_BETA_SCHEDULE = "squaredcos_cap_v2"
# GroupNorm groups and attention head size of the UNet: ``width`` must be a multiple.
_GROUPS = 8
# Images per denoiser call when sampling (twice as many rows with guidance).
_SAMPLE_CHUNK = 250
_NAME = "diffusion"


def _diffusers() -> Any:
    """diffusers, imported on first use; a clear sentence when it is missing."""
    try:
        import diffusers
    except ImportError as error:  # pragma: no cover - the plugin depends on it
        raise UserError(f"{_NAME}: diffusers is not installed ({error}); "
                        "pip install imgxfer-diffusers.") from None
    return diffusers


def unet_config(*, image_size: int, width: int, layers_per_block: int,
                channels: int) -> dict[str, Any]:
    """The :class:`diffusers.UNet2DModel` configuration of the generator's denoiser."""
    return dict(sample_size=image_size, in_channels=channels, out_channels=channels,
                block_out_channels=(width, 2 * width, 2 * width),
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                layers_per_block=layers_per_block, norm_num_groups=_GROUPS,
                attention_head_dim=_GROUPS, class_embed_type="identity")


class _Denoiser(nn.Module):
    """UNet2DModel plus the condition embedding that it adds to its timestep embedding."""

    def __init__(self, *, image_size: int, width: int, layers_per_block: int, channels: int,
                 num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.unet = _diffusers().UNet2DModel(**unet_config(
            image_size=image_size, width=width, layers_per_block=layers_per_block,
            channels=channels))
        cond_dim = 4 * width  # UNet2DModel's timestep embedding size
        self.num_classes, self.channels = num_classes, channels
        # class + num_classes * is_target, and one null token (index 2 * num_classes).
        self.condition = nn.Embedding(2 * num_classes + 1, cond_dim)
        self.text = HashedTextEncoder(embed_dim)
        self.text_proj = nn.Linear(embed_dim, cond_dim)

    @property
    def null(self) -> int:
        return 2 * self.num_classes

    def embed(self, tokens: torch.Tensor, text_ids: torch.Tensor,
              keep_text: torch.Tensor) -> torch.Tensor:
        """``[B, cond_dim]`` from condition tokens, caption ids and a 0/1 caption mask."""
        return self.condition(tokens) + self.text_proj(self.text(text_ids)) * keep_text[:, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=cond).sample


@dataclass
class _TrainingState(TrainingState):
    """imgxfer's training state (what ``train_steps`` and checkpoints handle) plus the
    averaged weights that samples come from."""

    ema: Any = None  # diffusers.training_utils.EMAModel

    @property
    def net(self) -> nn.Module:
        return self.modules["net"]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimizers["opt"]


class DiffusionGenerator:
    """Class-, domain- and caption-conditioned diffusion model (diffusers UNet2DModel,
    DDPM training, DDIM sampling with classifier-free guidance), trained in the run.

    Options: ``image_size`` side of the square images the model learns (a multiple of 4;
    samples are resized to the data's size); ``width`` channels of the first UNet level
    (a multiple of 8; 2x at the two lower levels); ``layers_per_block`` residual blocks
    per level; ``embed_dim`` size of the caption embedding; ``batch_size``; ``lr`` AdamW
    learning rate; ``train_timesteps`` noise levels of the DDPM schedule;
    ``sample_steps`` denoising steps when sampling; ``sampler`` ``ddim`` or ``dpm``
    (DPM-Solver++); ``guidance_scale`` classifier-free guidance (1: none);
    ``cond_dropout`` share of training examples without class and caption; ``strength``
    how far along the sampling schedule an edited image is noised (in (0, 1]; small keeps
    it close, at least one denoising step still runs; 1 redraws it); ``ema``
    decay of the averaged weights samples come from; ``target_weight`` share of each batch
    drawn from the target domain; ``checkpoint_every`` steps between training
    checkpoints; ``seed``.
    """

    conditioning = frozenset({"label", "text"})
    trains_by_steps = True
    resumable = True
    synthesis = frozenset({"text", "shots", "translate"})

    def __init__(self, *, image_size: int = 16, width: int = 16, layers_per_block: int = 1,
                 embed_dim: int = 32, batch_size: int = 64, lr: float = 1e-3,
                 train_timesteps: int = 1000, sample_steps: int = 15, sampler: str = "ddim",
                 guidance_scale: float = 1.5, cond_dropout: float = 0.1, ema: float = 0.999,
                 target_weight: float = 0.25, checkpoint_every: int = 250,
                 strength: float = 0.5, seed: int = 0) -> None:
        for name, value in (("image_size", image_size), ("width", width),
                            ("layers_per_block", layers_per_block), ("embed_dim", embed_dim),
                            ("batch_size", batch_size), ("train_timesteps", train_timesteps),
                            ("sample_steps", sample_steps),
                            ("checkpoint_every", checkpoint_every)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise UserError(f"{_NAME}: {name} must be a positive integer, got {value!r}.")
        if not (8 <= image_size <= 256 and image_size % 4 == 0):
            raise UserError(f"{_NAME}: image_size must be a multiple of 4 from 8 to 256, "
                            f"got {image_size!r}.")
        if width % _GROUPS:
            raise UserError(f"{_NAME}: width must be a multiple of {_GROUPS}, got {width!r}.")
        if sample_steps > train_timesteps:
            raise UserError(f"{_NAME}: sample_steps ({sample_steps}) cannot exceed "
                            f"train_timesteps ({train_timesteps}).")
        if sampler not in SAMPLERS:
            raise UserError(f"{_NAME}: sampler must be one of {', '.join(SAMPLERS)}, "
                            f"got {sampler!r}.")
        if not lr > 0:
            raise UserError(f"{_NAME}: lr must be positive, got {lr!r}.")
        if not guidance_scale >= 1:
            raise UserError(f"{_NAME}: guidance_scale must be 1 (no guidance) or more, "
                            f"got {guidance_scale!r}.")
        if not 0 <= cond_dropout < 1:
            raise UserError(f"{_NAME}: cond_dropout must be in [0, 1), got {cond_dropout!r}.")
        if guidance_scale > 1 and cond_dropout == 0:
            raise UserError(f"{_NAME}: guidance_scale {guidance_scale} needs cond_dropout > 0 "
                            "(the unconditional model is learned from the dropped conditions).")
        if not 0 <= ema < 1:
            raise UserError(f"{_NAME}: ema must be in [0, 1), got {ema!r}.")
        if not 0 <= target_weight <= 1:
            raise UserError(f"{_NAME}: target_weight must be in [0, 1], got {target_weight!r}.")
        if not 0 < strength <= 1:
            raise UserError(f"{_NAME}: strength must be in (0, 1], got {strength!r}.")
        self.image_size, self.width = int(image_size), int(width)
        self.layers_per_block, self.embed_dim = int(layers_per_block), int(embed_dim)
        self.batch_size, self.lr = int(batch_size), float(lr)
        self.train_timesteps, self.sample_steps = int(train_timesteps), int(sample_steps)
        self.sampler, self.guidance_scale = sampler, float(guidance_scale)
        self.cond_dropout, self.ema = float(cond_dropout), float(ema)
        self.target_weight, self.checkpoint_every = float(target_weight), int(checkpoint_every)
        self.seed, self.strength = int(seed), float(strength)
        self._translates = False  # trained for --synthesis translate (edit uses the null token)
        _diffusers()  # fail here, when the generator is built, if it is missing
        self.history: dict[str, list[float]] = {"loss": []}
        self._sampler: _Denoiser | None = None
        self._output_size: tuple[int, int] | None = None

    def resolved_options(self) -> dict[str, Any]:
        """Every option with its value: ``DiffusionGenerator(**these)`` builds the same."""
        return {"image_size": self.image_size, "width": self.width,
                "layers_per_block": self.layers_per_block, "embed_dim": self.embed_dim,
                "batch_size": self.batch_size, "lr": self.lr,
                "train_timesteps": self.train_timesteps, "sample_steps": self.sample_steps,
                "sampler": self.sampler, "guidance_scale": self.guidance_scale,
                "cond_dropout": self.cond_dropout, "ema": self.ema,
                "target_weight": self.target_weight,
                "checkpoint_every": self.checkpoint_every, "strength": self.strength,
                "seed": self.seed}

    @property
    def num_classes(self) -> int | None:
        """Classes the sampler draws (``None`` before ``fit`` or ``load_state_dict``)."""
        return None if self._sampler is None else self._sampler.num_classes

    # -- training ---------------------------------------------------------------------

    def _noise_scheduler(self) -> Any:
        return _diffusers().DDPMScheduler(num_train_timesteps=self.train_timesteps,
                                          beta_schedule=_BETA_SCHEDULE,
                                          prediction_type="epsilon", clip_sample=True)

    def _build(self, channels: int, num_classes: int) -> _Denoiser:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return _Denoiser(image_size=self.image_size, width=self.width,
                             layers_per_block=self.layers_per_block, channels=channels,
                             num_classes=num_classes, embed_dim=self.embed_dim)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> ``image_size`` squares in [-1, 1]."""
        return to_model_range(images, self.image_size)

    def fit(self, data: GeneratorData, *, budget: Budget, progress: Progress,
            device: torch.device | str = "cpu", checkpoint: str | Path | None = None,
            resume: bool = False) -> FitResult:
        """Train on ``data`` until ``budget`` is spent (steps in all and training seconds
        in all, those before a resume included). With ``checkpoint``, the training state
        is saved there every ``checkpoint_every`` steps, every 30 s and at the end; with ``resume``
        too, training continues from that file when it exists. On the CPU a resumed run
        ends with the same weights as one that was never interrupted."""
        _diffusers()
        from diffusers.training_utils import EMAModel

        device = torch.device(device)
        checkpoint = check_fit_inputs(_NAME, data, checkpoint)
        num_classes = len(data.class_names)
        images, tokens, texts, domains, force = self._training_set(data)
        channels = int(images.shape[1])
        captions = sorted(set(texts))
        position = {c: i for i, c in enumerate(captions)}
        caption_of = torch.tensor([position[c] for c in texts])
        caption_ids = token_ids(captions)
        weights = draw_weights(domains, data.target_domain, self.target_weight)

        net = self._build(channels, num_classes).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=0.0)
        ema = EMAModel(net.parameters(), decay=self.ema, foreach=True)
        scheduler = self._noise_scheduler()
        seed = self.seed + seed_offset()  # each process its own batches
        state = _TrainingState(
            modules={"net": net}, optimizers={"opt": optimizer}, ema=ema,
            generators={"draw": torch.Generator().manual_seed(seed),
                        "noise": torch.Generator(device=device).manual_seed(seed)},
            history={"loss": []},
            data=data_signature(data, shape=list(data.images.shape[1:])), device=device.type)
        if checkpoint is not None and resume and checkpoint.exists():
            self._load_training(checkpoint, state)
            progress.log(f"{_NAME}: resumed from {checkpoint} at step {state.step}")
        draw_rng = state.generators["draw"]

        def train_step(_: int) -> dict[str, float]:
            index = torch.multinomial(weights, self.batch_size, replacement=True,
                                      generator=draw_rng)
            loss = self._train_step(state, scheduler, images[index].to(device),
                                    tokens[index].to(device),
                                    caption_ids[caption_of[index]].to(device),
                                    None if force is None else force[index].to(device))
            state.history["loss"].append(loss)
            return {"loss": loss}

        net.train()
        # imgxfer's loop: the step and time budget counts an interrupted run's part, and
        # checkpoints come every checkpoint_every steps and every CHECKPOINT_SECONDS.
        train_steps(state, train_step, budget=budget, progress=progress,
                    description=f"generator: {_NAME}",
                    checkpoint=None if checkpoint is None else
                    Checkpointing(checkpoint, self._save_training, self.checkpoint_every))

        sampler = copy.deepcopy(net)
        ema.copy_to(sampler.parameters())
        self._sampler = sampler.cpu().eval().requires_grad_(False)
        self._output_size = (int(data.images.shape[-2]), int(data.images.shape[-1]))
        self._translates = data.synthesis == "translate"
        self.history = state.history
        return FitResult(state.step, {"loss": list(state.history["loss"])})

    def _training_set(self, data: GeneratorData) -> tuple[torch.Tensor, torch.Tensor,
                                                           list[str], list[str],
                                                           torch.Tensor | None]:
        """Images (model range), condition tokens, captions and domains to learn, and per
        image whether its condition is always kept (1), always dropped (0) or dropped at
        random (-1); ``None`` (all at random) unless the run translates, when unlabelled
        target images join under the null token and source images keep their condition."""
        num_classes = len(data.class_names)
        images = self._prepare(data.images)  # stays on the CPU; batches travel
        is_target = torch.tensor([d == data.target_domain for d in data.domains])
        tokens = data.labels.long() + num_classes * is_target.long()
        if data.synthesis != "translate" or data.unlabelled is None:
            return images, tokens, list(data.captions), list(data.domains), None
        from imgxfer import match_channels

        extra = self._prepare(match_channels(data.unlabelled.float(), int(images.shape[1])))
        force = torch.cat([torch.where(is_target, -1, 1), torch.zeros(len(extra), dtype=torch.long)])
        return (torch.cat([images, extra]),
                torch.cat([tokens, torch.full((len(extra),), 2 * num_classes)]),
                list(data.captions) + [""] * len(extra),
                list(data.domains) + [data.target_domain] * len(extra), force)

    def _train_step(self, state: _TrainingState, scheduler: Any, x0: torch.Tensor,
                    token: torch.Tensor, text: torch.Tensor,
                    force: torch.Tensor | None = None) -> float:
        """One denoising step on a batch: noise at a random timestep, the condition
        dropped to the null token with probability ``cond_dropout`` (for guidance) unless
        ``force`` says otherwise, the noise predicted, AdamW and the EMA updated. Returns
        the loss."""
        net, rng, device = state.net, state.generators["noise"], x0.device
        noise = torch.randn(x0.shape, generator=rng, device=device)
        t = torch.randint(0, self.train_timesteps, (len(x0),), generator=rng, device=device)
        keep = (torch.rand(len(x0), generator=rng, device=device) >= self.cond_dropout).float()
        if force is not None:
            keep = torch.where(force >= 0, force.float(), keep)
        token = torch.where(keep > 0, token, torch.full_like(token, net.null))
        noisy = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(net(noisy, t, net.embed(token, text, keep)), noise)
        state.optimizer.zero_grad(set_to_none=True)
        backward_step(loss, state.optimizer)
        state.ema.step(net.parameters())
        return loss.item()

    # -- training checkpoints -----------------------------------------------------------

    def _save_training(self, path: Path, state: _TrainingState) -> None:
        tensors: dict[str, torch.Tensor] = {
            f"net.{k}": v for k, v in state.net.state_dict().items()}
        tensors.update({f"ema.{i}": p for i, p in enumerate(state.ema.shadow_params)})
        tensors.update(optimizer_tensors("opt", state.optimizer))
        tensors.update(progress_tensors(state.generators, state.history))
        metadata = {"format": TRAINING_FORMAT, "version": str(_TRAINING_VERSION),
                    "step": str(state.step), "ema_step": str(state.ema.optimization_step),
                    "elapsed_s": repr(float(state.elapsed)), "device": state.device,
                    "options": json.dumps(self.resolved_options(), sort_keys=True),
                    "data": json.dumps(state.data, sort_keys=True)}
        atomic_save_tensors(path, tensors, metadata)

    def _load_training(self, path: Path, state: _TrainingState) -> None:
        tensors, meta = read_tensors(path, what="checkpoint", remedy="; delete it to start "
                                     "that training from the beginning")
        where = f"the {_NAME} checkpoint {str(path)!r}"
        ours = {k: v for k, v in self.resolved_options().items() if k not in _NOT_COMPARED}
        values = check_training_metadata(
            meta, where=where, format=TRAINING_FORMAT, version=_TRAINING_VERSION, options=ours,
            data=state.data, device=state.device,
            numbers={"step": int, "ema_step": int, "elapsed_s": float})
        step, ema_step, elapsed = values["step"], values["ema_step"], values["elapsed_s"]
        try:
            state.net.load_state_dict(strip_prefix(tensors, "net."))
            shadow = strip_prefix(tensors, "ema.")
            if len(shadow) != len(state.ema.shadow_params):
                raise ValueError(f"{len(shadow)} averaged tensors, not "
                                 f"{len(state.ema.shadow_params)}")
            for i, param in enumerate(state.ema.shadow_params):
                param.copy_(shadow[str(i)])
            state.ema.optimization_step = ema_step
            load_optimizer(tensors, "opt", state.optimizer)
            history = load_progress(tensors, state.generators, list(state.history))
        except (KeyError, RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[-1].strip() if str(error).strip() else ""
            raise UserError(f"{where} does not fit this generator: {first or error!r}.") from None
        if any(len(v) != step for v in history.values()):
            raise UserError(f"{where} is damaged: its loss history does not have {step} steps.")
        state.step, state.elapsed, state.history = step, elapsed, history

    # -- sampling ---------------------------------------------------------------------

    def _sample_scheduler(self) -> Any:
        diffusers = _diffusers()
        config = self._noise_scheduler().config
        if self.sampler == "dpm":
            scheduler = diffusers.DPMSolverMultistepScheduler.from_config(config)
        else:
            scheduler = diffusers.DDIMScheduler.from_config(config)
        scheduler.set_timesteps(self.sample_steps)
        return scheduler

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], labels: Sequence[int] | torch.Tensor, *,
               seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``[N, C, H, W]`` in [0, 1] on the CPU, one per prompt, at the size and
        channel count of the training images; the same ``seed`` gives the same images."""
        if self._sampler is None:
            raise RuntimeError("generator is not trained")
        device = torch.device(device)
        prompts = list(prompts)
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if len(labels) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
        net = self._sampler.to(device)
        k = net.num_classes
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < k):
            raise ValueError(f"labels must be class indices in [0, {k})")
        shape = (net.channels, self.image_size, self.image_size)
        # All the noise first, on the CPU: the images do not depend on the chunking or
        # on the device's random generator.
        noise = torch.randn(len(labels), *shape, generator=torch.Generator().manual_seed(seed))
        out = [torch.empty(0, net.channels, *(self._output_size or shape[1:]))]
        for start in range(0, len(labels), _SAMPLE_CHUNK):
            part = slice(start, start + _SAMPLE_CHUNK)
            cond, guided = self._condition(net, labels[part], prompts[part], device)
            out.append(self._denoise(net, noise[part].to(device), cond, guided, 0))
        return torch.cat(out)

    @torch.no_grad()
    def edit(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
             prompts: Sequence[str], *, seed: int = 0,
             device: torch.device | str = "cpu") -> torch.Tensor:
        """SDEdit: each image noised ``strength`` of the way along the sampling schedule and
        denoised into the target domain (``shots``: with its label and prompt, guided;
        trained to ``translate``: with the null token, the target domain's own); [N, C, H,
        W] in [0, 1] on the CPU at the training images' size; the same ``seed`` gives the
        same images."""
        from imgxfer import match_channels

        if self._sampler is None:
            raise RuntimeError("generator is not trained")
        device = torch.device(device)
        net = self._sampler.to(device)
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        prompts = list(prompts)
        if not (len(images) == len(labels) == len(prompts)):
            raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(prompts)} "
                             "prompts")
        x0 = self._prepare(match_channels(images.float(), net.channels))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        steps = len(self._sample_scheduler().timesteps)
        first = min(steps - 1, round(steps * (1 - self.strength)))
        out = [torch.empty(0, net.channels, *(self._output_size or x0.shape[-2:]))]
        for start in range(0, len(labels), _SAMPLE_CHUNK):
            part = slice(start, start + _SAMPLE_CHUNK)
            if self._translates:
                null = torch.full((len(labels[part]),), net.null, device=device)
                cond = net.embed(null, token_ids([""] * len(null)).to(device),
                                 torch.zeros(len(null), device=device))
                guided = False
            else:
                cond, guided = self._condition(net, labels[part], prompts[part], device)
            t = self._sample_scheduler().timesteps[first]
            x = self._sample_scheduler().add_noise(x0[part], noise[part], t.view(1))
            out.append(self._denoise(net, x.to(device), cond, guided, first))
        return torch.cat(out)

    def _condition(self, net: _Denoiser, labels: torch.Tensor, prompts: list[str],
                   device: torch.device) -> tuple[torch.Tensor, bool]:
        """Target-domain class tokens and captions, with the null condition appended when
        guidance is on."""
        n, k = len(labels), net.num_classes
        cond = net.embed((labels + k).to(device), token_ids(prompts).to(device),
                         torch.ones(n, device=device))
        guided = self.guidance_scale != 1
        if guided:
            null = net.embed(torch.full((1,), net.null, device=device),
                             token_ids([""]).to(device), torch.zeros(1, device=device))
            cond = torch.cat([cond, null.expand(n, -1)])
        return cond, guided

    def _denoise(self, net: _Denoiser, x: torch.Tensor, cond: torch.Tensor, guided: bool,
                 first: int) -> torch.Tensor:
        """Run the sampling schedule from its ``first`` step on ``x``; images in [0, 1] on
        the CPU at the output size."""
        scheduler = self._sample_scheduler()
        if first and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(first * scheduler.order)
        for t in scheduler.timesteps[first:]:
            eps = net(torch.cat([x, x]) if guided else x, t.to(x.device), cond)
            if guided:
                eps_c, eps_u = eps.chunk(2)
                eps = eps_u + self.guidance_scale * (eps_c - eps_u)
            x = scheduler.step(eps, t, x).prev_sample
        x = ((x + 1) / 2).clamp(0, 1)
        if self._output_size is not None and x.shape[-2:] != self._output_size:
            x = F.interpolate(x, size=self._output_size, mode="bilinear",
                              align_corners=False).clamp(0, 1)
        return x.cpu()

    # -- finished sampler -------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged denoiser plus ``meta.*`` shapes and architecture that rebuild it."""
        if self._sampler is None:
            raise RuntimeError("generator is not trained")
        state = {f"ema.{k}": v.detach().cpu().contiguous()
                 for k, v in self._sampler.state_dict().items()}
        out = self._output_size or (self.image_size, self.image_size)
        state.update({
            "meta.version": torch.tensor([_STATE_VERSION]),
            "meta.image_shape": torch.tensor([self._sampler.channels, *out]),
            "meta.num_classes": torch.tensor([self._sampler.num_classes]),
            "meta.translates": torch.tensor([int(self._translates)]),
            "meta.architecture": torch.tensor([self.image_size, self.width,
                                               self.layers_per_block, self.embed_dim,
                                               self.train_timesteps]),
        })
        return state

    @staticmethod
    def options_from_state(state: dict[str, torch.Tensor]) -> dict[str, int]:
        """The architecture options a :meth:`state_dict` was saved with (empty for a file
        without the ``meta.architecture`` entry)."""
        if "meta.architecture" not in state:
            return {}
        values = [int(v) for v in state["meta.architecture"]]
        return dict(zip(("image_size", "width", "layers_per_block", "embed_dim",
                         "train_timesteps"), values, strict=True))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a sampler saved by :meth:`state_dict` with the same architecture options."""
        needed = ("meta.version", "meta.image_shape", "meta.num_classes", "meta.architecture")
        if any(k not in state for k in needed):
            raise UserError(f"this checkpoint was not saved by the {_NAME} generator "
                            "(it lacks the meta.* entries).")
        if int(state["meta.version"][0]) != _STATE_VERSION:
            raise UserError(f"this {_NAME} checkpoint has format version "
                            f"{int(state['meta.version'][0])}; this plugin reads version "
                            f"{_STATE_VERSION}.")
        saved = self.options_from_state(state)
        ours = {k: getattr(self, k) for k in saved}
        if saved != ours:
            differ = ", ".join(f"{k}={saved[k]} (not {ours[k]})"
                               for k in saved if saved[k] != ours[k])
            raise UserError(f"this {_NAME} checkpoint was trained with {differ}; create the "
                            "generator with the same options to load it.")
        channels, height, width = (int(v) for v in state["meta.image_shape"])
        sampler = self._build(channels, int(state["meta.num_classes"][0]))
        try:
            sampler.load_state_dict(strip_prefix(state, "ema."))
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise UserError(f"this {_NAME} checkpoint does not fit the generator: "
                            f"{first}") from None
        self._sampler = sampler.eval().requires_grad_(False)
        self._output_size = (height, width)
        self._translates = bool(int(state.get("meta.translates", torch.zeros(1))[0]))
