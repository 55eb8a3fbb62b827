"""`imgxfer export`: a run's trained model as an ONNX or TorchScript file for serving, with
its preprocessing folded in and a model card beside it.

    imgxfer export --from runs/20250101-120000-mnist --format onnx --out model.onnx

loads the model as `imgxfer predict` does (:func:`imgxfer.cli.predict.load_classifier`,
:func:`imgxfer.cli.predict_dense.load_model`) and hands it to the task's exporter
(:mod:`imgxfer.tasks.classify.export`, :mod:`imgxfer.tasks.dense.export`), which checks
the file against the run's model before anything is written. docs/user-guide/export.md
says how to serve the file.
"""

from __future__ import annotations

from pathlib import Path

import click

from imgxfer.cli.context import current_registry
from imgxfer.cli.options import from_run
from imgxfer.core.errors import UserError
from imgxfer.run.export import DTYPES, FORMATS, Exported, card_path, check_format


@click.command("export", short_help="Export a run's model to ONNX or TorchScript for serving.")
@from_run
@click.option("--format", "fmt", required=True, metavar="|".join(FORMATS),
              help="onnx (for onnxruntime; needs the export extra) or torchscript "
                   "(torch.jit.load).")
@click.option("--out", "-o", metavar="FILE",
              help="The file to write (default ./model.onnx or ./model.pt; an existing folder "
                   "gets that name inside); the model card goes beside it as FILE's stem + .md.")
@click.option("--input-dtype", "dtype", default="float32", show_default=True,
              metavar="|".join(DTYPES),
              help="What the exported model takes: float32 images in [0, 1], or uint8 in 0-255.")
@click.option("--force", is_flag=True,
              help="Overwrite the output file and its model card if they exist.")
def export_command(run: str, adapter: str | None, fmt: str, out: str | None, dtype: str,
                   force: bool) -> None:
    """Export a run's trained model for serving: its classifier (or, for --task
    segment|detect, its segmentation or detection model) with the run's preprocessing
    folded in, as ONNX or TorchScript, and a model card (Markdown) beside it.

    The file takes images at the run's input size, (N, C, H, W), as float32 in [0, 1] or
    (--input-dtype uint8) as uint8 in 0-255, and returns logits (a detector: its heat
    maps, box sizes and offsets; boxes are decoded outside, see the card). It is loaded
    back and compared with the run's model before it is written: a difference above
    1e-4 writes nothing.

    \b
    Examples:
      imgxfer export --from runs/20250101-120000-syndigits-to-mnist --format onnx
      imgxfer export --from RUN --adapter mmd --format torchscript --out mmd.pt
    """
    from imgxfer.cli.predict_dense import is_dense_run

    check_format(fmt, dtype)  # before any model is loaded: the extra may be missing
    registry = current_registry()
    if is_dense_run(run):
        from imgxfer.cli.predict_dense import load_model
        from imgxfer.tasks.dense.export import export_dense

        model, config, name = load_model(run, adapter, registry)
        path = _out(out, fmt, force)
        given = Path(run).expanduser()
        done = export_dense(model, config=config, adapter=name, fmt=fmt, out=path, dtype=dtype,
                            folder=given if given.is_dir() else given.parent)
    else:
        from imgxfer.cli.predict import load_classifier
        from imgxfer.tasks.classify.export import export_classifier

        loaded = load_classifier(run, adapter, registry)
        path, name = _out(out, fmt, force), loaded.adapter
        done = export_classifier(loaded.model, class_names=loaded.class_names, adapter=name,
                                 config=loaded.config, file_metadata=loaded.metadata,
                                 folder=loaded.path.parent, fmt=fmt, out=path, dtype=dtype)
    _report(done, name)


def _out(out: str | None, fmt: str, force: bool) -> Path:
    """``--out`` as `imgxfer predict` checks it (a missing folder, an existing file without
    --force: one sentence), and the card beside it must be free too."""
    from imgxfer.cli.inputs import resolve_out

    path = resolve_out(out, default=f"model{FORMATS[fmt]}", force=force)
    card = card_path(path)
    if path.suffix.lower() == ".md":
        raise UserError(f"--out {str(path)!r} ends in .md, the model card's name; give the "
                        f"model file, e.g. {str(path.with_suffix(FORMATS[fmt]))!r}.")
    if card.exists() and not force:
        raise UserError(f"{str(card)!r} (the model card beside --out) already exists; use "
                        f"--force to overwrite it, or another --out such as "
                        f"{str(path.with_name(f'{path.stem}-{fmt}{path.suffix}'))!r}.")
    return path


def _report(done: Exported, adapter: str) -> None:
    check = ("the same outputs as the run's model" if done.max_difference == 0 else
             f"within {done.max_difference:.1g} of the run's model")
    click.echo(f"wrote {done.path} ({adapter!r}; {check} on {done.check_images} check "
               f"images) and its model card {done.card}", err=True)
