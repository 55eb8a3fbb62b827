"""report.html of a dense run: the setup, each adapter's scores, per-class IoU or AP, the
training curves, and test scenes with their true and predicted masks or boxes: the best
and the worst scenes of the first adapter, side by side with every other adapter's
prediction of the same scenes (so a comparison shows what adaptation changed)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from imgxfer.core.runfolder import PREDICTIONS, REPORT, atomic_write_bytes, atomic_write_text
from imgxfer.data.scenes import IGNORE, SceneDataset
from imgxfer.tasks.classify.report import _CSS, _img_tag, _png, _table, loss_plot
from imgxfer.tasks.dense.evaluate import COLUMNS, PER_CLASS

# isort: split
# After imgxfer.tasks.classify.report, which chooses the Agg backend before pyplot loads.
import matplotlib.pyplot as plt

SHOWN = 4  # best and worst test scenes in the figure
TEXT_PT = 9  # titles, row names, the legend (at _png's 110 dpi about 14 px)
BOX_PT = 8  # the class name on a box


def write(folder: Path, plan: Any, metrics: Any, results: dict[str, Any],
          source_history: list[float], synthetic: SceneDataset | None) -> None:
    config, test = plan.config, plan.split.test
    figure = prediction_figure(test, {n: r.predictions for n, r in results.items()},
                               config.task)
    atomic_write_bytes(folder / PREDICTIONS, figure)
    curves = {"source training": source_history,
              **{f"adapter {n}": r.history for n, r in results.items() if r.history}}
    body = [f"<h1>imgxfer {html.escape(config.task)} run: {html.escape(config.name)}</h1>",
            f"<p>{html.escape(str(folder))} · imgxfer {metrics.version} · seed "
            f"{metrics.seed} · {metrics.device}</p>",
            _setup(config, metrics, synthetic), *_scores(metrics),
            "<h2>Test scenes: truth and predictions</h2>",
            f"<p>The {SHOWN} best and {SHOWN} worst test scenes of "
            f"{html.escape(next(iter(results)))} (by per-scene score), with every adapter's "
            "prediction.</p>",
            _img_tag(figure, "test scenes with true and predicted annotations")]
    if any(curves.values()):
        body += ["<h2>Training</h2>", _img_tag(loss_plot(
            {k: v for k, v in curves.items() if v}, "loss per step"), "training losses")]
    atomic_write_text(folder / REPORT, "<!doctype html><html><head><meta charset='utf-8'>"
                      f"<title>imgxfer {html.escape(config.name)}</title><style>{_CSS}</style>"
                      "</head><body>" + "\n".join(body) + "</body></html>")


def _setup(config: Any, metrics: Any, synthetic: SceneDataset | None) -> str:
    data = metrics.data
    rows = [["task", config.task],
            ["source", f"{config.source} ({data['source']['scenes']} scenes)"],
            ["target", f"{config.target}: {data['target']['labelled']} labelled, "
                       f"{data['target']['unlabelled']} unlabelled, {data['target']['test']} test"],
            ["model", f"{config.encoder} + {metrics.model['head']} head "
                      f"(stages at strides {metrics.model['pyramid']['strides']})"],
            ["steps", f"source {config.encoder_steps}, adapters {config.adapter_steps}"],
            ["augmentation", f"{config.augment or 'each component’s own'}"
                             + (f" ({config.augment_reason})" if config.augment_reason else "")],
            ["source model", "on held-out source scenes: " + ", ".join(
                f"{label} {metrics.model['source_val'][key]:.3f}"
                for key, label in COLUMNS[config.task] if key in metrics.model.get(
                    "source_val", {}))]]
    if synthetic is not None and metrics.generator:
        rows.append(["translated scenes", f"{len(synthetic)} by {metrics.generator['name']} "
                                          f"({metrics.generator['steps']} steps)"])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.get("notes", []))
    return "<h2>Setup</h2>" + _table(["", ""], rows) + (f"<ul>{notes}</ul>" if notes else "")


def _scores(metrics: Any) -> list[str]:
    columns, (per, per_label) = COLUMNS[metrics.task], PER_CLASS[metrics.task]
    rows = [[name, *[f"{m.get(k, float('nan')):.4f}" for k, _ in columns],
             m.get("steps") if m.get("steps") is not None else "-",
             f"{m.get('train_seconds', 0):.1f}"]
            for name, m in metrics.adapters.items()]
    out = ["<h2>Target test scenes</h2>",
           _table(["adapter", *[c for _, c in columns], "steps", "train s"], rows)]
    names = list(next(iter(metrics.adapters.values())).get(per, {}))
    if names:
        per_rows = [[c, *[f"{m.get(per, {}).get(c, float('nan')):.3f}"
                          for m in metrics.adapters.values()]] for c in names]
        out += [f"<h3>{per_label} per class</h3>",
                _table(["class", *metrics.adapters], per_rows)]
    return out


def scene_scores(test: SceneDataset, predictions: list[Any]) -> np.ndarray:
    """A score per test scene to rank them: the share of object pixels labelled right
    (segmentation), or the share of true boxes found with IoU >= 0.5 by a same-class
    detection of score >= 0.3, minus false detections per object (detection)."""
    scores = []
    for i, pred in enumerate(predictions):
        if test.masks is not None and isinstance(pred, torch.Tensor):
            truth = test.masks[i]
            objects = (truth > 0) & (truth != IGNORE)
            scores.append(float((pred[objects] == truth[objects]).float().mean())
                          if objects.any() else float((pred == 0).float().mean()))
        else:
            # not a mask: detections, so the scenes have boxes
            boxes = cast("list[torch.Tensor]", test.boxes)
            labels = cast("list[torch.Tensor]", test.box_labels)
            scores.append(_detection_score(boxes[i], labels[i], pred))
    return np.array(scores)


def _detection_score(boxes: torch.Tensor, labels: torch.Tensor,
                     pred: dict[str, torch.Tensor]) -> float:
    from torchvision.ops import box_iou

    keep = pred["scores"] >= 0.3
    found, kept = pred["boxes"][keep], pred["labels"][keep]
    if not len(boxes):
        return -float(len(found))
    if not len(found):
        return 0.0
    match = (box_iou(boxes, found) >= 0.5) & (labels[:, None] == kept[None, :])
    hits = float(match.any(1).float().mean())
    return hits - float((~match.any(0)).sum()) / len(boxes)


def prediction_figure(test: SceneDataset, predictions: dict[str, list[Any]],
                      task: str) -> bytes:
    """Rows: the best then the worst scenes of the first adapter; columns: the image,
    the truth, each adapter's prediction."""
    first = next(iter(predictions.values()))
    order = np.argsort(scene_scores(test, first), kind="stable")
    n = min(SHOWN, len(order) // 2) or 1
    rows = list(order[::-1][:n]) + list(order[:n])
    columns = ["image", "truth", *predictions]
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False,
                             figsize=(1.6 * len(columns), 1.6 * len(rows)))
    for r, i in enumerate(rows):
        image = test.images[[int(i)]][0]
        cells = [(image, None), (image, _truth(test, int(i), task))]
        cells += [(image, preds[int(i)]) for preds in predictions.values()]
        for c, (img, annotation) in enumerate(cells):
            _draw(axes[r][c], img, annotation, test.class_names, c == 0)
            if r == 0:
                axes[r][c].set_title(columns[c], fontsize=TEXT_PT)
        axes[r][0].set_ylabel("best" if r < n else "worst", fontsize=TEXT_PT)
    fig.tight_layout()
    _legend(fig, test.class_names)
    return _png(fig)


def _colour(k: int, n_classes: int) -> Any:
    """The colour of ``class_names[k]`` (mask value ``k + 1``) in masks, boxes and the
    legend alike: what ``imshow(mask, cmap="tab10", vmin=1, vmax=max(10, n))`` gives it."""
    return plt.get_cmap("tab10")(k / (max(10, n_classes) - 1))


def _legend(fig: Any, classes: list[str]) -> None:
    """One patch per class under the figure: without it the colours name nothing."""
    from matplotlib.patches import Patch

    handles = [Patch(color=_colour(k, len(classes)), label=name) for k, name in enumerate(classes)]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(classes), 5), fontsize=TEXT_PT, frameon=False,
               title="classes", title_fontsize=TEXT_PT)


def _truth(test: SceneDataset, i: int, task: str) -> Any:
    """Scene ``i``'s annotation of the run's task (a dataset may have masks and boxes)."""
    # A dataset is read for the run's task: it has that task's annotations.
    if task == "segment":
        return cast(torch.Tensor, test.masks)[i]
    boxes = cast("list[torch.Tensor]", test.boxes)
    return {"boxes": boxes[i], "labels": cast("list[torch.Tensor]", test.box_labels)[i],
            "scores": torch.ones(len(boxes[i]))}


def _draw(ax: Any, image: torch.Tensor, annotation: Any, classes: list[str],
          plain: bool) -> None:
    from matplotlib.patches import Rectangle

    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    ax.imshow(rgb.permute(1, 2, 0).numpy())
    ax.set_xticks([]), ax.set_yticks([])
    if plain or annotation is None:
        return
    if isinstance(annotation, torch.Tensor):  # a mask: classes as colours over the image
        mask = annotation.numpy().astype(float)
        shown = np.ma.masked_where((mask == 0) | (mask == IGNORE), mask)
        ax.imshow(shown, cmap="tab10", vmin=1, vmax=max(10, len(classes)), alpha=0.6,
                  interpolation="nearest")
        return
    for box, label, score in zip(annotation["boxes"], annotation["labels"],
                                 annotation["scores"], strict=True):
        if score < 0.3:
            continue
        x0, y0, x1, y1 = box.tolist()
        colour = _colour(int(label), len(classes))
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               color=colour, linewidth=1.5))
        ax.text(x0, y0 - 1, classes[int(label)][:8], color="white", fontsize=BOX_PT,
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1})
