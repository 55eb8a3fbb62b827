"""A segmentation or detection run's model for serving (`imgxfer export`): the model that
`imgxfer predict` loads (``model-<adapter>.safetensors``), with its encoder's
preprocessing in front, as ONNX or TorchScript (:mod:`imgxfer.run.export`), and its model
card. A segmenter returns per-pixel logits; a detector returns its raw CenterNet maps,
and boxes are decoded outside the model by :func:`imgxfer.nn.dense.detection.decode`
(peaks and top-k are cheap in Python and awkward in a graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from imgxfer.core.config import RunConfig
from imgxfer.nn.dense.model import DenseModel
from imgxfer.run import export as exporting
from imgxfer.run.markdown import table
from imgxfer.run.modelcard import Card, Output, metric, usage
from imgxfer.tasks.dense.evaluate import COLUMNS, PER_CLASS
from imgxfer.tasks.dense.record import DenseRunMetrics

DETECTOR_OUTPUTS = ("heatmap", "size", "offset")  # CenterNetHead's, in this order


def outputs(model: DenseModel) -> list[str]:
    return ["logits"] if model.task == "segment" else list(DETECTOR_OUTPUTS)


def stride(model: DenseModel) -> int:
    """The detector's output stride: map cell (i, j) covers pixels [j*s, (j+1)*s)."""
    return int(cast(Any, model.head).stride)


def export_dense(model: DenseModel, *, config: RunConfig, adapter: str, folder: Path,
                 fmt: str, out: Path, dtype: str = "float32") -> exporting.Exported:
    """Write ``model`` (as ``imgxfer.cli.predict_dense.load_model`` rebuilds it from the run
    in ``folder``) as ``fmt`` into ``out`` with its model card beside it, after the check."""
    exporting.check_format(fmt, dtype)  # before the card names the format
    metrics = DenseRunMetrics.from_json(exporting.read_metrics_json(folder))
    spec = exporting.InputSpec(int(cast(Any, model.encoder).in_channels),
                               cast("tuple[int, int]", model.size), dtype)
    names = outputs(model)
    served = exporting.Served(model, model.preprocess, names, uint8=dtype == "uint8")
    metadata: dict[str, Any] = {
        "imgxfer.task": model.task, "imgxfer.adapter": adapter,
        "imgxfer.classes": model.class_names, "imgxfer.input": spec.describe(),
        "imgxfer.outputs": names, "imgxfer.run": folder.name}
    if model.task == "detect":
        metadata["imgxfer.stride"] = stride(model)
    card = dense_card(model, metrics, config, adapter, folder, spec, fmt, out)
    return exporting.export(served, spec, fmt, out, metadata=metadata, card=card.render())


def dense_card(model: DenseModel, metrics: DenseRunMetrics, config: RunConfig, adapter: str,
               folder: Path, spec: exporting.InputSpec, fmt: str, out: Path) -> Card:
    task, classes = model.task, model.class_names
    target = metrics.data.get("target", {})
    what = exporting.NAMES[fmt]
    kind = "segmentation model" if task == "segment" else "object detector"
    generator = metrics.generator or {}
    return Card(
        title=f"{config.source} → {config.target}: {adapter} {kind} ({config.encoder}, "
              f"{model.head_name})",
        summary=(f"A{'n' if task == 'detect' else ''} {kind} for the {len(classes)} classes "
                 f"of `{config.target}` scenes, "
                 f"transferred from `{config.source}` by the `{adapter}` adapter (a "
                 f"`{model.head_name}` head on a `{config.encoder}` encoder) with imgxfer "
                 f"{metrics.version} (run `{folder.name}`, seed {metrics.seed}), exported as "
                 f"{what} (`{out.name}`) with its preprocessing inside."),
        header={"library_name": "imgxfer",
                "pipeline_tag": "image-segmentation" if task == "segment" else "object-detection",
                "tags": ["imgxfer", "transfer-learning", "few-shot", fmt],
                "datasets": list(dict.fromkeys([config.source, config.target])),
                "metrics": ["mean_iou"] if task == "segment" else ["map"]},
        data=[("source (labelled)", f"`{config.source}`: "
                                    f"{metrics.data.get('source', {}).get('scenes', '?')} scenes"),
              ("target", f"`{config.target}`: {target.get('labelled', '?')} labelled scenes, "
                         f"{target.get('unlabelled', '?')} unlabelled, "
                         f"{target.get('test', '?')} held out for testing"),
              ("classes", ", ".join(f"`{c}`" for c in classes)
               + (" (and background, class 0)" if task == "segment" else "")),
              ("synthetic images", f"{generator.get('translated_scenes', '?')} source scenes "
                                   f"translated by `{generator.get('name')}`" if generator
               else "none")],
        metrics=_metrics(metrics, task, adapter, target.get("test", "?")),
        inputs=spec,
        reading=[f"scenes are read at {spec.size[0]}×{spec.size[1]}: resize each image to it "
                 "(antialiased bilinear) and map the outputs back to the image's own size, "
                 "as `imgxfer predict` does"],
        outputs=_outputs(model, spec),
        extra=[] if task == "segment" else [_decoding(model, spec)],
        usage=usage(fmt, out, spec, outputs(model), _after(model, fmt)),
        intended_use=[
            f"{'Segmenting' if task == 'segment' else 'Finding objects in'} "
            f"`{config.target}`-like scenes (its {len(classes)} classes), as a starting "
            "point after few-shot transfer: check it on annotated scenes of your own before "
            "relying on it.",
            "Not for scenes of another domain, nor for classes outside the list."],
        limitations=_limitations(metrics, config, adapter))


def _metrics(metrics: DenseRunMetrics, task: str, adapter: str, n_test: Any) -> list[str]:
    mine = metrics.adapters.get(adapter, {})
    rows = [(label, metric(mine.get(key))) for key, label in COLUMNS[task]]
    key, label = PER_CLASS[task]
    blocks = [f"On the {n_test} held-out test scenes of the target, seed {metrics.seed}; "
              "no intervals are computed for dense metrics:", table(["metric", "value"], rows)]
    per_class = mine.get(key) or {}
    if per_class:
        blocks.append(table(["class", label], [(c, metric(v)) for c, v in per_class.items()]))
    headline, name = COLUMNS[task][0]
    others = [f"`{a}` {m[headline]:.4f}" for a, m in metrics.adapters.items()
              if a != adapter and isinstance(m.get(headline), (int, float))]
    if others:
        blocks.append(f"Other adapters of the same run, {name}: {', '.join(others)}.")
    blocks.append(f"Measured with one seed ({metrics.seed}); benchmarks/dense.py runs several.")
    return blocks


def _outputs(model: DenseModel, spec: exporting.InputSpec) -> list[Output]:
    h, w = spec.size
    if model.task == "segment":
        return [Output("logits", f"(N, {len(model.class_names) + 1}, {h}, {w})",
                       "per-pixel class scores, background first; argmax over dim 1 is "
                       "the mask (0 background, k the k-th class)")]
    s, c = stride(model), len(model.class_names)
    cells = f"{h // s}, {w // s}"
    return [Output("heatmap", f"(N, {c}, {cells})", "logits of an object centre of each "
                   "class in each cell (sigmoid gives its score)"),
            Output("size", f"(N, 2, {cells})", "log width and log height of the box, in "
                   f"cells of {s} pixels"),
            Output("offset", f"(N, 2, {cells})", "the centre's x and y inside its cell")]


def _decoding(model: DenseModel, spec: exporting.InputSpec) -> str:
    s = stride(model)
    return (f"## Decoding boxes\n\nBoxes are decoded outside the model, as the run decoded "
            f"them: `imgxfer.nn.dense.detection.decode(outputs, stride={s}, "
            f"image_size={tuple(spec.size)})` takes the three outputs as a dict of torch "
            "tensors and returns per image `boxes` (x0, y0, x1, y1 in input pixels), "
            "`scores` and `labels`, best first. Without imgxfer: score = sigmoid(heatmap); "
            "a peak is a score equal to the maximum of its 3×3 neighbourhood; keep the top "
            "100 peaks with score ≥ 0.05; at a peak in class k, cell (i, j): centre = ((j, i) "
            f"+ offset) × {s}, width and height = exp(size) × {s}; clip to the image. These "
            "are decode's defaults, with which the run scored its boxes.")


def _after(model: DenseModel, fmt: str) -> str:
    """Python that continues the usage lines: the masks, or the decoded boxes."""
    if model.task == "segment":
        return "masks = logits.argmax(1)  # (N, H, W): 0 background, k the k-th class"
    return ("import torch\n" if fmt == "onnx" else "") + (
        "from imgxfer.nn.dense.detection import decode\n\n"
        "maps = {k: torch.as_tensor(v) for k, v in "
        "zip(('heatmap', 'size', 'offset'), (heatmap, size, offset))}\n"
        f"detections = decode(maps, stride={stride(model)})  # per image: boxes, scores, labels")


def _limitations(metrics: DenseRunMetrics, config: RunConfig, adapter: str) -> list[str]:
    target = metrics.data.get("target", {})
    out = [f"The figures come from {target.get('test', '?')} test scenes of one dataset; "
           "scenes from elsewhere may score lower."]
    if adapter == "source-only":
        out.append("This is the source-only model: it never trained on target scenes, "
                   "labelled or not; it is the run's baseline.")
    if target.get("labelled") == 0:
        out.append("No labelled target scenes were used (0 shots).")
    if metrics.generator:
        out.append(f"Its training data included source scenes translated into the target's "
                   f"style by `{metrics.generator.get('name')}` (their masks and boxes are the "
                   "source's).")
    out += list(metrics.data.get("notes", []))
    out.append("The input size is fixed: resize scenes to it before calling the model.")
    return out
