"""Stage 2: the encoder, trained on the labelled source when it knows how (pretrained
backbones skip this)."""

from __future__ import annotations

import logging
from typing import Any

from imgxfer.budget import Budget
from imgxfer.config import RunConfig
from imgxfer.plan import Plan
from imgxfer.progress import Progress
from imgxfer.protocols import declared

log = logging.getLogger("imgxfer")


def encode(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Move the plan's encoder to the device and pretrain it on the source; metrics.json's
    ``encoder`` section (what pretraining reported, then name, feature size, weights)."""
    config, device = plan.config, plan.device
    encoder = plan.encoder = plan.encoder.to(device)
    metrics: dict[str, Any] = {}
    if declared(encoder, "pretrains", "encoders") and config.encoder_steps > 0:
        metrics = dict(encoder.pretrain(plan.source, budget=Budget(config.encoder_steps),
                                        progress=progress, device=device) or {})
    elif config.encoder_steps != RunConfig.encoder_steps and config.encoder_steps > 0:
        log.warning("encoder %s does not train on the source (it has no pretrain), so "
                    "encoder_steps = %d is not used.", config.encoder, config.encoder_steps)
    metrics.update(name=config.encoder, feature_dim=int(encoder.feature_dim),
                   weights=str(encoder.weights_source))
    log.info("encoder %s: %s", config.encoder, metrics)
    return metrics
