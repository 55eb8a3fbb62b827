"""The options of a run that `imgxfer run` and `imgxfer tune` share, defined once: data,
components, budgets, seed, device, data loading, precision, output, the experiment
tracker and the --STAGE-opt flags (help texts read their defaults from RunConfig)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from imgxfer.core.config import (
    AUGMENT_POLICIES,
    AUTO,
    MIXED_PRECISION,
    MODE_STEPS,
    STAGES,
    TRACKERS,
    RunConfig,
)

# Budgets, seed, device, data loading, precision and augmentation: the same help for both
# commands.
_BUDGET_AND_RUNTIME = [
        click.option("--encoder-steps", type=int, help="Steps of source training for the "
                     f"encoder (default {RunConfig.encoder_steps})."),
        click.option("--generator-steps", type=int,
                     help=f"Generator training steps (default: {MODE_STEPS['translate']} "
                          f"when it translates, {MODE_STEPS['text']} otherwise)."),
        click.option("--generator-time",
                     help="Wall-clock cap on generator training, e.g. 90s or 3m."),
        click.option("--adapter-steps", type=int,
                     help=f"Adapter training steps (default {RunConfig.adapter_steps})."),
        click.option("--seed", type=int,
                     help=f"Seed for everything random (default {RunConfig.seed})."),
        click.option("--device", help="auto (default), cpu, cuda, cuda:N or mps."),
        click.option("--workers", type=int, metavar="N",
                     help="Processes that decode images of datasets streamed from files "
                          "(default: one per spare core, at most 4; 0: in the main process)."),
        click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION),
                     help="bf16: training's forward passes in bfloat16 (default no)."),
        click.option("--augment", type=click.Choice((AUTO, *AUGMENT_POLICIES)),
                     help="Augmentation policy of every training stage: encoder pre-training, "
                          "adapters and the GAN's discriminator (default auto: style, which "
                          "randomises colours, where a grey source meets a colour target, "
                          "else each component's own, light for the built-ins; see "
                          "`imgxfer.nn.augmentation`)."),
]


def run_options(*, config: str, name: str, adapter: str, out: str) -> Callable[[Any], Any]:
    """A decorator adding the shared options; the four help texts differ per command."""
    R = RunConfig
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help=config),
        click.option("--name", help=name),
        click.option("--task", type=click.Choice(["classify", "segment", "detect"]),
                     help="classify images (default), segment them (a class per pixel) or "
                          "detect objects (boxes); segment/detect default to the embedded "
                          "digit-scenes:syndigits -> digit-scenes:mnist-m."),
        click.option("--head", help="Segmentation head (unet, the default; fcn, deeplabv3, "
                                    "lraspp) or detection head (centernet) of a dense task."),
        click.option("--source", help=f"Source dataset (default {R.source})."),
        click.option("--target", help=f"Target dataset (default {R.target})."),
        click.option("--shots", type=int,
                     help=f"Labelled target images per class (default {R.shots})."),
        click.option("--test-fraction", type=float,
                     help=f"Share of each target class held out for testing ({R.test_fraction})."),
        click.option("--encoder", help=f"Encoder (default {R.encoder})."),
        click.option("--captioner", help=f"Captioner (default {R.captioner})."),
        click.option("--generator",
                     help=f"Generator, or 'none' to skip generation (default {R.generator})."),
        click.option("--adapter", help=adapter),
        click.option("--synthetic-per-class", type=int,
                     help=f"Synthetic images per class (default {R.synthetic_per_class})."),
        click.option("--synthesis", type=click.Choice(["auto", "text", "shots", "translate"]),
                     help="How synthetic images are made: translate (labelled source images "
                          "in the target's style; works at --shots 0), text (from prompts), "
                          "shots (variations of the labelled target images) or auto "
                          "(default: translate where the generator can and the target has "
                          "unlabelled images, else text)."),
        *_BUDGET_AND_RUNTIME,
        click.option("--out", type=click.Path(), help=out),
        click.option("--tracker", type=click.Choice(TRACKERS),
                     help="Also log losses by step, final metrics and the config to "
                          "TensorBoard or MLflow (default none; docs/user-guide/tracking.md)."),
        click.option("--tracker-uri", metavar="URI",
                     help="Where the tracker writes: TensorBoard's log folder, or any MLflow "
                          "tracking URI (default: RUN/tensorboard, or sqlite:///<out>/mlflow.db)."),
        *[click.option(f"--{stage}-opt", f"{stage}_opt", multiple=True, metavar="KEY=VALUE",
                       help=f"Option for the {stage} component (repeatable).")
          for stage in STAGES],
    ]

    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate
