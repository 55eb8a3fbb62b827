"""Stage 2: the encoder, trained on the labelled source when it knows how (pretrained
backbones skip this)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from imgxfer.core.budget import Budget
from imgxfer.core.config import RunConfig
from imgxfer.core.progress import Progress
from imgxfer.plugin.protocols import declared

if TYPE_CHECKING:  # the plan imports the stages through its run
    from imgxfer.tasks.classify.plan import Plan

log = logging.getLogger("imgxfer")


def encode(plan: Plan, progress: Progress) -> tuple[Any, dict[str, Any]]:
    """The plan's encoder on the device, pretrained on the source, and metrics.json's
    ``encoder`` section (what pretraining reported, then name, feature size, weights).
    The plan is left as it is: the caller makes the plan of the next stages."""
    config, device = plan.config, plan.device
    encoder = plan.encoder.to(device)
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
    return encoder, metrics
