"""The ``clip:PATH`` adapter: CLIP zero-shot classification from class-name prompts, and
Tip-Adapter (Zhang et al. 2022, "Tip-Adapter: Training-free adaption of CLIP for
few-shot classification") on the labelled target shots.

How it fits imgxfer's classifier (an encoder and a linear head, which
``classifier.safetensors`` holds and ``imgxfer predict`` rebuilds): the run's encoder must
be ``clip:PATH`` of the same folder, whose features are normalised CLIP image embeddings f.

- ``mode = "zero-shot"``: the head's weights are ``s * T`` (T: the normalised text
  embeddings of the class prompts, s: CLIP's logit scale), no bias; ``head(f)`` is CLIP's
  zero-shot logits exactly.
- ``mode = "tip"`` (default): the shots' embeddings become the keys of a
  :class:`~imgxfer_transformers.clip.TipCache` set in the encoder, which then returns
  ``[f, A]`` with affinities ``A = exp(-beta (1 - f K^T))``; the head's weights are
  ``[s * T | alpha * L^T]`` (L: the cached one-hot labels), so the logits are
  Tip-Adapter's ``s f T^T + alpha A L``, exactly. The non-linear part lives in the
  encoder (its keys are saved in its state dict), the linear part in the head.
- ``mode = "tip-f"``: Tip-Adapter-F, the keys trained for ``--adapter-steps`` steps with
  AdamW (cross-entropy on the cached images; T, L, alpha and beta fixed). Unlike the
  paper, the images are not augmented, so the training set equals the cache.
- Synthetic images join the cache with their labels weighted by ``synthetic_weight``
  (0 leaves them out), as CaFo (Zhang et al. 2023) caches generated images.

It also scores images without fitting (``scores_images``): ``score_images`` gives each
image CLIP's zero-shot probability of its class, with its own copy of the model, so
``--synthetic-filter-by clip:PATH`` works whatever the run's encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from imgxfer import (
    Budget,
    Classifier,
    Progress,
    TransferData,
    UserError,
    backward_step,
    predict_logits,
    seed_offset,
)
from imgxfer_transformers.clip import (
    ClipImageEncoder,
    TipCache,
    check_prompts,
    class_embeddings,
    encoder_from_model,
    load_clip,
    load_tokenizer,
)

__all__ = ["ClipAdapter", "MODES", "DEFAULT_PROMPTS"]

MODES = ("zero-shot", "tip", "tip-f")
DEFAULT_PROMPTS = ["a photo of a {description} {label}."]


class ClipAdapter:
    """CLIP zero-shot, Tip-Adapter or Tip-Adapter-F (``mode``) with the CLIP model of a
    local folder; the run's encoder must be ``clip:`` the same folder.

    Options: ``mode`` zero-shot, tip (default) or tip-f; ``prompts`` a template or list of
    templates with {label} and optionally {description} (averaged); ``alpha`` weight of the
    cache logits; ``beta`` sharpness of the affinities; ``synthetic_weight`` weight of
    synthetic images in the cache (0: left out); ``lr`` and ``batch_size`` of tip-f;
    ``seed`` of tip-f's batches.
    """

    scores_images = True
    trains_by_steps = False  # tip-f trains by steps: set per instance
    tunable = {"alpha": ("log", 0.1, 10.0), "beta": ("log", 0.5, 20.0)}

    def __init__(self, path: str, *, mode: str = "tip", prompts: Any = None, alpha: float = 1.0,
                 beta: float = 5.5, synthetic_weight: float = 0.5, lr: float = 1e-3,
                 batch_size: int = 64, seed: int = 0) -> None:
        self.name = f"clip:{path}"
        if mode not in MODES:
            raise UserError(f"{self.name}: mode must be one of {', '.join(MODES)}, got {mode!r}.")
        for option, value in (("alpha", alpha), ("beta", beta), ("lr", lr)):
            if not value > 0:
                raise UserError(f"{self.name}: {option} must be above 0, got {value!r}.")
        if not synthetic_weight >= 0:
            raise UserError(f"{self.name}: synthetic_weight must be 0 or more, "
                            f"got {synthetic_weight!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"{self.name}: batch_size must be a positive integer, "
                            f"got {batch_size!r}.")
        self.mode, self.alpha, self.beta = mode, float(alpha), float(beta)
        self.synthetic_weight, self.lr, self.batch_size = float(synthetic_weight), float(lr), batch_size
        self.seed = seed
        self.prompts = check_prompts(DEFAULT_PROMPTS if prompts is None else prompts, self.name)
        self.trains_by_steps = mode == "tip-f"
        # Zero-shot reads only the target's class names (those of its labelled set).
        uses = {"target_labelled"} | ({"synthetic"} if mode != "zero-shot"
                                      and self.synthetic_weight > 0 else set())
        self.uses = frozenset(uses)
        self.history: list[dict[str, float]] = []
        self.path, self.model = load_clip(path, self.name)
        self.tokenizer = load_tokenizer(self.path, self.name)
        self._scorer: ClipImageEncoder | None = None

    # -- fitting --------------------------------------------------------------------------

    def fit(self, encoder: Any, data: TransferData, *, budget: Budget, progress: Progress,
            device: torch.device) -> Classifier:
        self.check_encoder(encoder)
        text = self.text_head(data.class_names, data.target_labelled.description, device)
        keys, values = (None, None) if self.mode == "zero-shot" else self.cache_entries(
            encoder, data, device)
        if keys is None or not len(keys):
            if self.mode != "zero-shot":
                progress.log(f"{self.name}: no labelled images to cache; zero-shot only")
            return linear_classifier(encoder, text, None)
        cache = TipCache(keys, self.beta).to(device)
        if self.mode == "tip-f":
            self.history = self.train_keys(cache, text.to(device), values.to(device),
                                           budget, progress)
        encoder.set_cache(cache)
        return linear_classifier(encoder, text, self.alpha * values.t())

    def check_encoder(self, encoder: Any) -> None:
        """imgxfer calls it when a run is prepared, before anything is trained."""
        if not isinstance(encoder, ClipImageEncoder) or encoder.path != self.path:
            used = (f"clip:{encoder.path}" if isinstance(encoder, ClipImageEncoder)
                    else f"a {type(encoder).__name__}")
            raise UserError(f"adapter {self.name} classifies with that CLIP model's image "
                            f"tower, so the run's encoder must be clip:{self.path} (it is "
                            f"{used}); give --encoder clip:{self.path}.")

    def text_head(self, class_names: Sequence[str], description: str,
                  device: torch.device) -> torch.Tensor:
        """``s * T`` [C, D]: CLIP's zero-shot classifier weights, on the CPU."""
        self.model.to(device)
        text = class_embeddings(self.model, self.tokenizer, class_names, description,
                                self.prompts, device)
        return self.model.logit_scale.exp().detach().float().cpu() * text

    def cache_entries(self, encoder: ClipImageEncoder, data: TransferData,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (normalised embeddings [K, D]) and values (weighted one-hot labels [K, C])
        of the labelled shots and, with a synthetic weight, the synthetic images."""
        sets = [(data.target_labelled, 1.0)]
        if data.synthetic is not None and len(data.synthetic) and "synthetic" in self.uses:
            sets.append((data.synthetic, self.synthetic_weight))
        keys, values = [], []
        for dataset, weight in sets:
            keys.append(predict_logits(encoder, dataset.images, device,
                                       preprocess=encoder.preprocess))
            values.append(weight * F.one_hot(dataset.labels, len(data.class_names)).float())
        return torch.cat(keys), torch.cat(values)

    def train_keys(self, cache: TipCache, text: torch.Tensor, values: torch.Tensor,
                   budget: Budget, progress: Progress) -> list[dict[str, float]]:
        """Tip-Adapter-F: the keys trained on the cached images (weighted cross-entropy on
        their labels), AdamW with a cosine schedule, as in the paper."""
        features = cache.keys.detach().clone()
        labels, weights = values.argmax(1), values.max(1).values
        steps = max(1, int(budget.steps or 1))
        optimizer = torch.optim.AdamW(cache.parameters(), lr=self.lr, eps=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        draw = torch.Generator().manual_seed(self.seed + seed_offset())
        # Epochs of shuffled batches; a cache smaller than a batch is one batch (all of it).
        size, order = min(self.batch_size, len(features)), torch.empty(0, dtype=torch.long)
        history = []
        with progress.task(f"{self.name} (tip-f)", total=steps) as task:
            for step in range(steps):
                if budget.done(step):
                    break
                if len(order) < size:
                    order = torch.cat([order, torch.randperm(len(features), generator=draw)])
                idx, order = order[:size].to(features.device), order[size:]
                f = features[idx]
                logits = f @ text.t() + self.alpha * cache(f) @ values
                loss = (F.cross_entropy(logits, labels[idx], reduction="none")
                        * weights[idx]).sum() / weights[idx].sum()
                backward_step(loss, optimizer)
                schedule.step()
                value = float(loss.detach())
                history.append({"loss": value})
                task.advance(1, loss=value)
        return history

    # -- scoring (the synthetic filter) ---------------------------------------------------

    @torch.inference_mode()
    def score_images(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int], *,
                     class_names: Sequence[str], description: str = "",
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """CLIP's zero-shot probability of class ``labels[i]`` for each image [N], on the CPU."""
        device = torch.device(device)
        if self._scorer is None:
            self._scorer = encoder_from_model(self.model, self.path).eval()
        text = self.text_head(class_names, description, device).to(device)
        features = predict_logits(self._scorer, images, device,
                                  preprocess=self._scorer.preprocess).to(device)
        proba = (features @ text.t()).softmax(1).cpu()
        labels = torch.as_tensor(labels, dtype=torch.long).view(-1, 1)
        return proba.gather(1, labels).flatten()


def linear_classifier(encoder: ClipImageEncoder, text: torch.Tensor,
                      cache_values: torch.Tensor | None) -> Classifier:
    """A :class:`Classifier` whose head holds ``[text | cache_values]`` and no bias."""
    weight = text if cache_values is None else torch.cat([text, cache_values], dim=1)
    model = Classifier(encoder, len(text))
    device = next(encoder.parameters()).device
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.zero_()
    return model.to(device).eval()  # a classifier is returned ready to predict
