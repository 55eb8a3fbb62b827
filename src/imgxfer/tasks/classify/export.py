"""A classification run's classifier for serving (`imgxfer export`): the model that
`imgxfer predict` loads, with its encoder's preprocessing in front, as ONNX or
TorchScript (:mod:`imgxfer.run.export`), and its model card from the run's config.toml
and metrics.json (:mod:`imgxfer.run.modelcard`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from torch import nn

from imgxfer.core.config import RunConfig
from imgxfer.core.runfolder import SUMMARY
from imgxfer.data.layout import GLYPH
from imgxfer.plugin.protocols import Encoder, encoder_input_size
from imgxfer.run import export as exporting
from imgxfer.run.markdown import table
from imgxfer.run.metrics import AdapterMetrics, RunMetrics
from imgxfer.run.modelcard import Card, Output, metric, usage
from imgxfer.run.uncertainty import accuracy_interval, noise_warnings, wilson_interval


def export_classifier(model: nn.Module, *, class_names: list[str], adapter: str,
                      config: RunConfig, file_metadata: dict[str, str], folder: Path,
                      fmt: str, out: Path, dtype: str = "float32") -> exporting.Exported:
    """Write ``model`` (a run's :class:`~imgxfer.nn.classifier.Classifier`, as
    ``imgxfer.cli.predict.load_classifier`` rebuilds it from ``folder``) as ``fmt`` into
    ``out``, taking images of ``dtype``, and its model card beside it; nothing is written
    unless the file checks out."""
    exporting.check_format(fmt, dtype)  # before the card names the format
    metrics = RunMetrics.from_json(exporting.read_metrics_json(folder))
    encoder = cast(Encoder, model.encoder)
    spec = exporting.InputSpec(int(encoder.in_channels), encoder_input_size(encoder), dtype)
    served = exporting.Served(model, encoder.preprocess, ["logits"], uint8=dtype == "uint8")
    metadata = {"imgxfer.task": "classify", "imgxfer.adapter": adapter,
                "imgxfer.classes": class_names, "imgxfer.input": spec.describe(),
                "imgxfer.outputs": ["logits"], "imgxfer.run": folder.name}
    card = classifier_card(metrics, config, adapter, class_names, file_metadata, folder,
                           spec, fmt, out)
    return exporting.export(served, spec, fmt, out, metadata=metadata, card=card.render())


def classifier_card(metrics: RunMetrics, config: RunConfig, adapter: str,
                    class_names: list[str], file_metadata: dict[str, str], folder: Path,
                    spec: exporting.InputSpec, fmt: str, out: Path) -> Card:
    data = metrics.data
    source, target = data.get("source", {}), data.get("target", {})
    what = exporting.NAMES[fmt]
    return Card(
        title=f"{config.source} → {config.target}: {adapter} classifier ({config.encoder})",
        summary=(f"An image classifier for the {len(class_names)} classes of `{config.target}`, "
                 f"transferred from `{config.source}` by the `{adapter}` adapter on a "
                 f"`{config.encoder}` encoder with imgxfer {metrics.imgxfer_version} (run "
                 f"`{folder.name}`, seed {metrics.seed}), exported as {what} (`{out.name}`) "
                 "with its preprocessing inside."),
        header={"library_name": "imgxfer", "pipeline_tag": "image-classification",
                "tags": ["imgxfer", "transfer-learning", "few-shot", fmt],
                "datasets": list(dict.fromkeys([config.source, config.target])),
                "metrics": ["accuracy", "f1"]},
        data=[("source (labelled)", f"`{config.source}`: {source.get('images', '?')} images"),
              ("target", f"`{config.target}`: {target.get('labelled', '?')} labelled "
                         f"({config.shots} shots per class), {target.get('unlabelled', '?')} "
                         f"unlabelled, {target.get('test', '?')} held out for testing"),
              ("classes", ", ".join(f"`{c}`" for c in class_names)),
              ("synthetic images", _synthetic(metrics, adapter)),
              ("encoder", f"`{config.encoder}`, weights: "
                          f"{metrics.encoder.get('weights', 'not recorded')}")],
        metrics=_metrics(metrics, config, adapter, folder),
        inputs=spec, reading=_reading(spec, file_metadata),
        outputs=[Output("logits", f"(N, {len(class_names)})",
                        "one score per class, in the order of the classes above; softmax "
                        "gives probabilities, argmax the class")],
        usage=usage(fmt, out, spec, ["logits"],
                    f"classes = {json.dumps(class_names)}\n"
                    "print([classes[i] for i in logits.argmax(1)])"),
        intended_use=[
            f"Sorting images of the target domain (`{config.target}`) into its "
            f"{len(class_names)} classes, as a starting point after few-shot transfer: "
            "check it on labelled images of your own before relying on it.",
            "Not for images of another domain than the target, nor for classes outside "
            "the list: the model always answers one of its classes, with no 'none'."],
        limitations=_limitations(metrics, config, adapter))


def _synthetic(metrics: RunMetrics, adapter: str) -> str:
    gen = metrics.generator
    if gen is None or not gen.synthetic_images:
        return "none"
    delta = (metrics.synthetic_delta or {}).get(adapter)
    read = ("" if delta is None or not delta.same_fit
            else f" (the `{adapter}` adapter does not read them)")
    return (f"{gen.synthetic_images} made by `{gen.name}` (synthesis "
            f"`{gen.synthesis or 'text'}`){read}")


def _metrics(metrics: RunMetrics, config: RunConfig, adapter: str, folder: Path) -> list[str]:
    """The adapter's test figures with 95% Wilson intervals, the baselines beside them,
    and the spread over seeds when the run is one seed of a ``--seeds`` run."""
    target, n = metrics.target, metrics.target.n_test
    first = adapter == config.adapter_names()[0]  # metrics.json's `target` is the first's
    mine = metrics.adapters.get(adapter, AdapterMetrics())
    rows = [("accuracy", metric(mine.accuracy, accuracy_interval(target) if first
                                else wilson_interval(mine.accuracy, n)))]
    if first:
        rows += [("macro precision", metric(target.macro_precision)),
                 ("macro recall", metric(target.macro_recall))]
    rows += [("macro F1", metric(mine.macro_f1)), ("chance (1 / classes)", metric(target.chance))]
    rows += [(f"accuracy of `{name}` (baseline, for comparison)", metric(b.accuracy))
             for name, b in (metrics.baselines or {}).items()]
    blocks = [f"On the {n} held-out test images of `{config.target}`, seed {metrics.seed} "
              "(95% Wilson intervals in brackets):", table(["metric", "value"], rows)]
    if first and target.per_class:
        blocks.append(table(["class", "precision", "recall", "F1", "test images"],
                            [(c["class"], metric(c["precision"]), metric(c["recall"]),
                              metric(c["f1"]), c["support"]) for c in target.per_class]))
    delta = (metrics.synthetic_delta or {}).get(adapter)
    if delta is not None and not delta.same_fit and delta.without is not None:
        blocks.append(f"Without the synthetic images the same adapter reached accuracy "
                      f"{metric(delta.without)} (with them {metric(delta.with_)}).")
    blocks.append(_seeds(folder, adapter, metrics.seed))
    return blocks


def _seeds(folder: Path, adapter: str, seed: int) -> str:
    """The mean ± std over the seeds of a ``--seeds`` run (summary.json beside the seed
    folders), else a sentence saying the figures are of one seed."""
    summary = folder.parent / SUMMARY
    row: dict[str, Any] = {}
    seeds: list[int] = []
    if folder.name.startswith("seed-") and summary.is_file():
        payload = json.loads(summary.read_text(encoding="utf-8"))
        row = payload.get("adapters", {}).get(adapter, {})
        seeds = payload.get("seeds", [])
    if "accuracy_mean" not in row:
        return (f"Measured with one seed ({seed}); run `imgxfer run --seeds 0,1,2` to see "
                "how much the figures move between seeds.")
    return (f"Over the seeds {', '.join(map(str, seeds))} of this run (`{SUMMARY}`): "
            f"accuracy {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}, macro F1 "
            f"{row.get('macro_f1_mean', float('nan')):.4f} ± "
            f"{row.get('macro_f1_std', float('nan')):.4f} (mean ± sample std).")


def _reading(spec: exporting.InputSpec, file_metadata: dict[str, str]) -> list[str]:
    """How an image file becomes the input, as `imgxfer predict` reads it."""
    h, w = spec.size
    lines = [f"resize the whole image to {h}×{w} (antialiased bilinear, no centre crop), as "
             "`imgxfer predict` reads files"]
    if file_metadata.get("target_layout") == GLYPH:
        lines.append("the run's target is in the glyph layout (MNIST's): the object scaled "
                     "into a 20/28 box and centred by its centre of mass, light on black; "
                     "`imgxfer predict` puts files into this layout (fit=glyph) and the model "
                     "does not, so give it images already laid out so (its answers match "
                     "`imgxfer predict --dataset-opt fit=crop`)")
    try:
        mean, std = (float(v) for v in json.loads(file_metadata["target_brightness"]))
        lines.append(f"the run's target images have a mean brightness of {mean:.2f} ± "
                     f"{std:.2f} (0 black, 1 white); far darker or brighter images, or ink "
                     "and background the other way round, are outside what it learnt")
    except (KeyError, ValueError, TypeError):
        pass
    return lines


def _limitations(metrics: RunMetrics, config: RunConfig, adapter: str) -> list[str]:
    """What the run itself knows about the model's limits."""
    target = metrics.data.get("target", {})
    # Below a few hundred test images a 95% interval is wider than about ±0.05.
    small = " (the intervals above are wide on so few)" if (metrics.target.n_test or 0) < 400 else ""
    out = [f"The figures come from {metrics.target.n_test} test images of one dataset{small}; "
           "images from elsewhere (another camera, scanner or style) may score lower."]
    weights = str(metrics.encoder.get("weights", ""))
    if weights.startswith("trained on"):
        out.append(f"The encoder was pretrained on the source domain only ({weights}); "
                   f"what it knows of the target comes from the `{adapter}` adapter.")
    elif weights in ("none", "random", ""):
        out.append("The encoder started from random weights (no pretraining recorded).")
    if target.get("labelled") == 0:
        out.append("No target labels were used (0 shots): the classifier learnt the target "
                   "from unlabelled images only, and its classes from the source.")
    gen = metrics.generator
    delta = (metrics.synthetic_delta or {}).get(adapter)
    if gen is not None and gen.synthetic_images and not (delta and delta.same_fit):
        out.append(f"It was trained on {gen.synthetic_images} synthetic images as well "
                   f"(`{gen.name}`, {gen.synthesis or 'text'}); see the run's report.html "
                   "for their quality.")
    out += list(metrics.data.get("notes", []))  # e.g. a reconstructed dataset
    out += noise_warnings(_as_run_classifier(metrics, config, adapter))
    out.append("The input size is fixed: resize images to it before calling the model "
               "(the model does not resize).")
    return out


def _as_run_classifier(metrics: RunMetrics, config: RunConfig, adapter: str) -> RunMetrics:
    """``metrics`` with ``adapter``'s accuracy as the target's (metrics.json's ``target``
    is the first adapter's), ``adapter`` first and its synthetic delta alone, so
    :func:`noise_warnings` judges this classifier."""
    if adapter not in metrics.adapters:
        return metrics
    deltas = {k: v for k, v in (metrics.synthetic_delta or {}).items() if k == adapter}
    metrics = replace(metrics, adapters={adapter: metrics.adapters[adapter], **metrics.adapters},
                      synthetic_delta=deltas or None)
    if adapter == config.adapter_names()[0]:
        return metrics
    accuracy = metrics.adapters[adapter].accuracy
    target = replace(metrics.target, accuracy=accuracy,
                     accuracy_interval=wilson_interval(accuracy, metrics.target.n_test))
    return replace(metrics, target=target)
