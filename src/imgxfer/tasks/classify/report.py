"""What a person reads after a run: captions.jsonl, sample grids and a self-contained
report.html (plots and images embedded as base64 PNGs)."""

from __future__ import annotations

import base64
import html
import io
import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from imgxfer.core.runfolder import (  # noqa: E402
    EXPLANATIONS,
    REPORT,
    SAMPLES,
    atomic_write_bytes,
    atomic_write_text,
)
from imgxfer.data.dataset import ImageDataset, Split  # noqa: E402
from imgxfer.run.metrics import AdapterMetrics, GeneratorMetrics, RunMetrics  # noqa: E402
from imgxfer.run.uncertainty import accuracy_interval, cas_intervals, noise_warnings, with_interval  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from imgxfer.data.images import ImageStore


def write_captions(path: Path, captions: dict[str, list[str]], source: ImageDataset,
                   split: Split, synthetic: ImageDataset | None = None) -> None:
    """One JSON object per line: set, index within that set, the image's file (datasets
    read from files), label (if known), caption. Synthetic images are labelled with the
    class they were generated as; their caption is the prompt."""
    labels = {"source": source.labels, "target": split.labelled.labels}
    if synthetic is not None:
        labels["synthetic"] = synthetic.labels
    paths = {"source": source.paths, "target": split.labelled.paths,
             "unlabelled": split.unlabelled.paths}
    rows = []
    for part, texts in captions.items():
        known = labels.get(part)
        for i, text in enumerate(texts):
            row: dict[str, Any] = {"set": part, "index": i, "caption": text}
            if paths.get(part) is not None:
                row["path"] = cast("list[str]", paths[part])[i]
            if known is not None:
                row["label"] = source.class_names[int(known[i])]
            rows.append(json.dumps(row))
    atomic_write_text(path, "\n".join(rows) + "\n")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# A grid cell's side in pixels at most: about what a cell takes on screen, so large
# images are shrunk (by area averaging) before they reach the canvas.
GRID_CELL = 64


def _cells(ds: ImageDataset, index: list[int], side: int) -> list[np.ndarray]:
    """The images ``index`` of ``ds`` as RGB float32 arrays in [0, 1] whose longer side is
    ``side`` (area-averaged when shrunk, nearest-neighbour when grown; grey as RGB)."""
    if not index:
        return []
    images = ds.images[index].float()
    images = images[:, :3] if images.shape[1] >= 3 else images[:, :1].expand(-1, 3, -1, -1)
    h, w = images.shape[-2:]
    size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
    mode = "area" if max(h, w) > side else "nearest"
    images = torch.nn.functional.interpolate(images, size=size, mode=mode)
    return list(images.clamp(0, 1).permute(0, 2, 3, 1).numpy())


def sample_grid(class_names: list[str], rows: dict[str, ImageDataset | None],
                per_class: int | dict[str, int] = 6) -> bytes:
    """One row per class: for each set ("target shots", "real", "synthetic"...) a few of
    its images of that class, the sets side by side. ``per_class``: columns per set (one
    number for all, or by set title). The images are laid into one canvas drawn by one
    ``imshow``: an axes per image took seconds per grid."""
    sets = [(k, v) for k, v in rows.items() if v is not None and len(v)]
    widths = [per_class if isinstance(per_class, int) else per_class.get(k, 6) for k, _ in sets]
    side = min(GRID_CELL, max((max(ds.images.shape[-2:]) for _, ds in sets), default=8))
    cell, gap = side + 2, round(0.3 * (side + 2))  # a 2-px border; a gap between sets
    firsts = [sum(widths[:i]) * cell + i * gap for i in range(len(sets))]  # x of each set
    canvas = np.ones((max(1, len(class_names)) * cell,
                      max(1, sum(widths) * cell + gap * (len(sets) - 1)), 3), dtype=np.float32)
    for c in range(len(class_names)):
        for (_, ds), width, first in zip(sets, widths, firsts, strict=True):
            index = torch.nonzero(ds.labels == c).flatten()[:width].tolist()
            for j, image in enumerate(_cells(ds, index, side)):
                h, w = image.shape[:2]  # centred in its cell
                y, x = c * cell + 1 + (side - h) // 2, first + j * cell + 1 + (side - w) // 2
                canvas[y:y + h, x:x + w] = image
    columns = sum(widths) + 0.3 * max(0, len(sets) - 1)
    fig, ax = plt.subplots(figsize=(0.7 * columns + 1.2, 0.7 * len(class_names) + 0.5))
    ax.imshow(canvas)
    ax.axis("off")
    for c, name in enumerate(class_names):  # the class name left of its row
        ax.text(-side * 0.1, c * cell + cell / 2, name, ha="right", va="center", fontsize=9)
    # Each set's title centred over its own columns, wrapped to their width (about 9
    # characters per column), so a one-column set's title does not run into the next.
    for (title, _), width, first in zip(sets, widths, firsts, strict=True):
        ax.text(first + width * cell / 2, -side * 0.15, textwrap.fill(title, 9 * width),
                ha="center", va="bottom", fontsize=9)
    return _png(fig)


def thumbnail(image: torch.Tensor, size: int = 64) -> bytes:
    """A small PNG of one [C,H,W] image in [0,1] (nearest-neighbour upscaling, so pixels
    stay visible), made with Pillow: far cheaper than a matplotlib figure per image."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array[..., :3])
    scale = max(1, size // max(pil.size))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def captioned_images(sets: dict[str, tuple[torch.Tensor | ImageStore | None, list[str]]],
                     per_set: int = 4) -> list[tuple[str, int, bytes, str]]:
    """(set, index, thumbnail PNG, caption) for ``per_set`` images of each set, spread
    evenly over the set (sets are ordered by class, so several classes show)."""
    rows = []
    for part, (images, texts) in sets.items():
        if images is None or not len(texts):
            continue
        n = min(len(texts), len(images))
        for i in sorted(set(np.linspace(0, n - 1, min(per_set, n)).round().astype(int).tolist())):
            rows.append((part, i, thumbnail(images[i]), texts[i]))
    return rows


def confusion_plot(matrix: list[list[int]], class_names: list[str]) -> bytes:
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 1.0 + 0.45 * len(class_names)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(
        ax=ax, colorbar=False, xticks_rotation=45, values_format="d")
    ax.set_title("confusion matrix (target test split)")
    return _png(fig)


def loss_plot(history: dict[str, list[float]], title: str = "generator training") -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3))
    values: list[float] | np.ndarray  # each loss curve, then as an array
    for name, values in history.items():
        values = np.asarray(values, dtype=float)
        k = max(1, len(values) // 100)  # moving average: raw per-step losses are noisy
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(title)
    return _png(fig)


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _adapter_steps(adapters: dict[str, AdapterMetrics]) -> str:
    """'400 steps', or per adapter where they differ: a probe solved to convergence (steps
    None) trains by no step count."""
    said = {n: "no steps" if r.steps is None else f"{r.steps} steps"
            for n, r in adapters.items()}
    if len(set(said.values())) == 1:
        return next(iter(said.values()))
    return "; ".join(f"{n}: {v}" for n, v in said.items())


def _short(value: Any) -> str:
    """A setup detail for reading: floats to 4 significant digits (0.34, not 0.3400000035)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto}
.big{font-size:1.4em}.muted{color:#777}.warn{color:#8a4b00;background:#fff4e0;padding:.3em .6em}"""


# Shown in "Generator quality", not in the setup table.
_QUALITY_KEYS = {"name", "cas", "cas_real", "cas_real_images", "cas_steps", "fid", "kid_mean",
                 "kid_std", "fid_real", "kid_real_mean", "feature_space", "nearest_shot",
                 "nearest_shot_real", "label_kept", "cas_interval", "cas_real_interval",
                 "cas_test_images", "fid_real_spread"}


def _generator_sections(metrics: RunMetrics) -> list[str]:
    """Generator quality (CAS, FID/KID, the filter) and the synthetic delta, as HTML."""
    gen = metrics.generator or GeneratorMetrics()
    parts = _quality_section(gen, metrics.target.n_test) if gen.cas is not None else []
    if gen.filter is not None:
        f = gen.filter
        parts.append(f"<p>Synthetic filter: kept {f['kept']} of {f['generated']} generated images "
                     f"that a linear probe on source + target shots gives probability &ge; "
                     f"{f['threshold']} for their class (per class: "
                     f"{', '.join(map(str, f['kept_per_class']))}); the adapters and the quality "
                     "measures above use the kept images only.</p>")
    if metrics.synthetic_delta:
        parts.append("<h2>Do the synthetic images help?</h2><p class='muted'>Each adapter trained "
                     "twice on the same split, encoder and seed: with and without the synthetic "
                     "images (adapters that never read them, e.g. source-only, are not "
                     "listed). Target test accuracy.</p>" + _table(
                         ["adapter", "with synthetic", "without", "delta"],
                         [[n, r.with_, r.without, f"{r.delta:+.4f}"
                           + (" (does not read them)" if r.same_fit else "")]
                          for n, r in metrics.synthetic_delta.items()]))
    return parts


def _quality_section(gen: GeneratorMetrics, n_test: int | None) -> list[str]:
    assert gen.cas is not None  # _generator_sections calls it only for a measured CAS
    space = html.escape(gen.feature_space or "the run's encoder")
    cas, cas_real = cas_intervals(gen, n_test)
    floor: Any = _or_dash(gen.fid_real) if gen.fid_real_spread is None else \
        f"{gen.fid_real:.4f} ± {gen.fid_real_spread:.4f}"
    parts = [
        "<h2>Generator quality</h2><p>CAS: a fixed small classifier (imgxfer.nn.nets.SmallConvNet) trained on "
        "the synthetic images only and tested on the real target test split; CAS real: "
        f"the same classifier trained on {gen.cas_real_images or '?'} real target "
        "training images (class-matched); in brackets their 95% Wilson intervals on "
        f"{gen.cas_test_images or n_test or '?'} test images. FID and KID compare the synthetic images with "
        f"the target test split in the feature space of the run's encoder ({space}), "
        "<b>not Inception's: the values are not comparable with published FID/KID</b>; "
        "the 'real' column is the same distance for the real reference images, the floor "
        "a perfect generator would reach (± its spread over bootstrap resamples). "
        "'Nearest real image is a shot': how often the "
        "closest real target image of the same class (in pixels, among the labelled shots "
        "and the test split) is one of the shots; for real held-out images it is the "
        "reference, and a synthetic value far above it means the generator copies its "
        "few target shots rather than drawing new target images.</p>" + _table(
            ["", "synthetic", "real reference"],
            [["CAS (accuracy on real test)", with_interval(gen.cas, cas),
              "-" if gen.cas_real is None else with_interval(gen.cas_real, cas_real)],
             ["FID (encoder features)", gen.fid, floor],
             ["KID (encoder features)", f"{gen.kid_mean:.4f} ± {gen.kid_std:.4f}",
              _or_dash(gen.kid_real_mean)]]
            + ([["Nearest real image is a shot", gen.nearest_shot, gen.nearest_shot_real]]
               if gen.nearest_shot is not None else [])
            + ([["Label kept (the real-data CAS classifier agrees; real: its test "
                 "accuracy)", gen.label_kept, gen.cas_real]]
               if gen.label_kept is not None else []))]
    if gen.per_class:
        parts.append("<h3>Per class</h3><p>Each class's synthetic images against its "
                     "real test images; the real reference compares real training images "
                     "of the class (as many as there are synthetic ones, where the "
                     "training split has them) with the same test images: the floor a "
                     "perfect generator would reach.</p>" + _table(
            ["class", "FID", "FID, real reference", "KID", "KID, real reference",
             "test / synthetic / reference images"],
            [[r["class"], r["fid"], r.get("fid_real", "-"), r["kid_mean"],
              r.get("kid_real_mean", "-"),
              f"{r['n_real']} / {r['n_fake']} / {r.get('n_reference', 0)}"]
             for r in gen.per_class]))
    return parts


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value


_MADE_FROM = {"shots": "the labelled target shots", "translate": "labelled source images"}


def _synthesis_origins(names: list[str], extras: dict[str, Any],
                       gen: GeneratorMetrics | None) -> list[str]:
    """For --synthesis shots / translate: each synthetic image beside the real image it
    was made from (the k-th image of a class on the left became the k-th on the right)."""
    inputs: ImageDataset | None = extras.get("synthesis_inputs")
    synthetic: ImageDataset | None = extras.get("synthetic")
    mode = (gen.synthesis if gen else None) or "text"
    if inputs is None or synthetic is None or mode not in _MADE_FROM:
        return []
    grid = sample_grid(names, {"made from": inputs, "synthetic": synthetic}, per_class=6)
    return [f"<h2>What the synthetic images were made from</h2><p class='muted'>--synthesis "
            f"{mode}: the generator edited {_MADE_FROM[mode]}, keeping their labels. One row "
            "per class: six input images, then the six synthetic images made from them, in "
            "the same order.</p>" + _img_tag(grid, "inputs and their synthetic images")]


def write_report(folder: Path, config: Any, metrics: RunMetrics, extras: dict[str, Any]) -> None:
    """report.html plus samples.png; everything embedded so the HTML can be mailed alone."""
    split: Split = extras["split"]
    synthetic: ImageDataset | None = extras.get("synthetic")
    names = split.test.class_names
    grid = sample_grid(names, {"target shots": split.labelled, "real target (test split)": split.test,
                               "synthetic": synthetic},
                       per_class={"target shots": min(4, max(1, config.shots)),
                                  "real target (test split)": 5, "synthetic": 6})
    atomic_write_bytes(folder / SAMPLES, grid)
    parts = _header(folder, config, metrics) + _setup(config, metrics) + _target_metrics(metrics)
    # classification_metrics always gives the run's target its confusion matrix
    matrix = cast("list[list[int]]", metrics.target.confusion_matrix)
    parts.append(_img_tag(confusion_plot(matrix, names), "confusion matrix"))
    parts.append(_samples(grid, synthetic is not None, len(split.labelled) > 0))
    parts += _synthesis_origins(names, extras, metrics.generator)
    parts += _generator_sections(metrics)
    parts += _explanations(folder, metrics)
    parts += _losses(extras)
    parts.append(_captions(extras))
    timings = metrics.timings_s
    parts.append("<h2>Time per stage (s)</h2>" + _table(
        list(timings) + ["total"],
        [[f"{v:.1f}" for v in timings.values()] + [f"{sum(timings.values()):.1f}"]]))
    parts.append("<h2>Resolved config</h2><pre>" + html.escape(config.to_toml()) + "</pre>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>imgxfer run "
            f"{html.escape(config.name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    atomic_write_text(folder / REPORT, page)


def _header(folder: Path, config: Any, metrics: RunMetrics) -> list[str]:
    target = metrics.target
    return ([f"<h1>imgxfer run: {html.escape(config.name)}</h1>",
            f"<p class='muted'>{html.escape(str(folder))} · imgxfer {metrics.imgxfer_version} · "
            f"device {metrics.device} · seed {metrics.seed}</p>",
            f"<p class='big'>Target accuracy <b>{target.accuracy:.3f}</b>{_interval(target)} · "
            f"macro F1 <b>{target.macro_f1:.3f}</b> <span class='muted'>(chance "
            f"{target.chance:.3f}, {target.n_test} held-out test images)</span></p>"]
            + _noise_warnings(metrics) + _baselines(metrics))


def _interval(target: Any) -> str:
    """The headline accuracy's 95% interval, small beside it (none in very old files)."""
    low_high = accuracy_interval(target)
    return ("" if low_high is None else
            f" <span class='muted'>(95% interval {low_high[0]:.3f}-{low_high[1]:.3f})</span>")


def _noise_warnings(metrics: RunMetrics) -> list[str]:
    """One line per figure within noise of chance or below its baseline
    (imgxfer.run.uncertainty), under the headline."""
    return [f"<p class='warn'>&#9888; {html.escape(w)}</p>" for w in noise_warnings(metrics)]


def _baselines(metrics: RunMetrics) -> list[str]:
    """What the headline is judged against, on the same test split: the source model (no
    target image) and the run's adapter without its synthetic images."""
    first = next(iter(metrics.adapters))
    rows = [["chance (1 / classes)", metrics.target.chance, "–"]]
    rows += [[f"{name} (frozen source encoder, logistic head)", r.accuracy, r.macro_f1]
             for name, r in (metrics.baselines or {}).items()]
    delta = (metrics.synthetic_delta or {}).get(first)
    if delta is not None:
        rows += [[f"{first} without synthetic images", delta.without, delta.macro_f1_without],
                 [f"{first} with synthetic images (this run)", delta.with_, delta.macro_f1_with]]
    if len(rows) == 1:  # chance alone is in the headline already
        return []
    gain = (f" The synthetic images changed {html.escape(first)}'s accuracy by "
            f"<b>{delta.delta:+.3f}</b> (one seed; <code>imgxfer run --seeds 0,1,2,3,4</code> "
            "tells a gain from noise)." if delta is not None else "")
    return ["<h2>Compared with</h2><p class='muted'>The same test split. The source model "
            "is the run's encoder as the source trained it, with a linear head fitted on "
            f"source images: what transfer starts from.{gain}</p>"
            + _table(["model", "accuracy", "macro F1"], rows)]


def _setup(config: Any, metrics: RunMetrics) -> list[str]:
    data = metrics.data
    generator = {k: v for k, v in (metrics.generator.to_json() if metrics.generator else {}).items()
                 if k not in _QUALITY_KEYS and not isinstance(v, (dict, list))}
    parts = ["<h2>Setup</h2>" + _table(["stage", "choice", "details"], [
        ["source", config.source, f"{data['source']['images']} labelled images, domain {data['source']['domain']}"],
        ["target", config.target, f"{data['target']['labelled']} labelled shots ({config.shots}/class), "
                                  f"{data['target']['unlabelled']} unlabelled, {data['target']['test']} test"],
        ["encoder", config.encoder, ", ".join(f"{k}={_short(v)}" for k, v in metrics.encoder.items() if k != "name")],
        ["captioner", config.captioner, ""],
        ["generator", config.generator, ", ".join(f"{k}={_short(v)}" for k, v in generator.items())],
        ["adapter", ", ".join(config.adapter_names()), _adapter_steps(metrics.adapters)],
    ])]
    if metrics.generator is not None and config.synthesis_reason:
        parts.append(f"<p>Synthetic images: <b>--synthesis {html.escape(config.synthesis)}</b> "
                     f"({html.escape(config.synthesis_reason)}).</p>")
    if config.augment_reason:
        parts.append(f"<p>Augmentation: <b>--augment {html.escape(config.augment or 'auto')}"
                     f"</b> ({html.escape(config.augment_reason)}).</p>")
    if data.get("notes"):
        parts.append("<p>Data notes: " + html.escape("; ".join(data["notes"])) + "</p>")
    return parts


def _target_metrics(metrics: RunMetrics) -> list[str]:
    target, adapters = metrics.target, metrics.adapters
    # The IM score wherever the console shows it: in this table for one adapter, in the
    # comparison below for several.
    im = target.unlabelled_im if len(adapters) == 1 else None
    assert target.accuracy is not None  # classification_metrics always measures it
    parts = ["<h2>Target test metrics</h2>" + _table(
        ["accuracy", "macro precision", "macro recall", "macro F1"]
        + (["IM (no labels)"] if im is not None else []),
        [[with_interval(target.accuracy, accuracy_interval(target)), target.macro_precision,
          target.macro_recall, target.macro_f1]
         + ([im] if im is not None else [])])]
    if len(adapters) > 1:
        parts.append("<h3>Adapters compared on the same split</h3><p class='muted'>The first one "
                     "is the run's classifier, shown in the rest of this report.</p>" + _table(
            ["adapter", "accuracy", "macro F1", "IM (no labels)", "train seconds"],
            [[n, r.accuracy, r.macro_f1, "–" if r.unlabelled_im is None else r.unlabelled_im,
              f"{r.train_seconds:.1f}"]
             for n, r in adapters.items()]))
    if any(r.unlabelled_im is not None for r in adapters.values()):
        parts.append("<p class='muted'>IM (information maximisation, 0 to 1) scores each "
                     "classifier's predictions on the "
                     "unlabelled target images for confidence and class balance, without "
                     "labels (higher is better); it favours confident methods. How well it "
                     "ranks adapters is measured in imgxfer's docs/benchmarks.md.</p>")
    parts.append(_table(["class", "precision", "recall", "F1", "support"],
                        [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]]
                         for r in target.per_class or []]))
    return parts


def _samples(grid: bytes, with_synthetic: bool, with_shots: bool) -> str:
    shots = "the labelled target shots, then " if with_shots else ""
    if with_synthetic:
        return ("<h2>Real vs synthetic images</h2><p class='muted'>One row per class: "
                f"{shots}real held-out target images, then synthetic images.</p>"
                + _img_tag(grid, "real and synthetic samples"))
    return (f"<h2>Target images</h2><p class='muted'>One row per class: {shots}real "
            "held-out target images (no generator in this run).</p>"
            + _img_tag(grid, "target samples"))


def _explanations(folder: Path, metrics: RunMetrics) -> list[str]:
    """Where the classifiers look: the figure the adapt stage drew (read from the run
    folder, so a report rebuilt from metrics.json shows it too), described from its
    record in metrics.json."""
    record = metrics.explanations
    path = folder / str((record or {}).get("figure", EXPLANATIONS))
    if not record or not path.is_file():
        return []
    adapters = [html.escape(a) for a in record.get("adapters", [])]
    several = (f" One map per adapter, in the order compared ({', '.join(adapters)}): side by "
               "side they show what each method changed in where the model looks (e.g. "
               "source-only beside an adapted model)." if len(adapters) > 1 else "")
    wrong = sum(not r.get("correct", True) for r in record.get("images", []))
    return ["<h2>Where the classifier looks</h2><p class='muted'>Class-activation maps "
            f"({html.escape(str(record.get('method')))}, read from layer "
            f"<code>{html.escape(str(record.get('layer')))}</code>) of a few target test "
            "images per class: first ones the run's classifier gets right, then ones it gets "
            f"wrong ({wrong} shown). Red marks the regions that raised the score of the "
            "class written under each map (the model's prediction, with its probability); "
            f"a map is scaled to its own maximum.{several} `imgxfer explain` draws such "
            "maps for any images.</p>" + _img_tag(path.read_bytes(), "explanations")]


def _losses(extras: dict[str, Any]) -> list[str]:
    parts = []
    history = extras.get("generator_history")
    if history:
        parts.append("<h2>Generator losses</h2>" + _img_tag(loss_plot(history), "generator losses"))
    adapter_history = {k: v for k, v in extras.get("adapter_history", {}).items() if v}
    if adapter_history:
        parts.append("<h2>Adapter losses</h2><p class='muted'>The training loss of each "
                     "adapter that trains with gradient steps (its labelled cross-entropy "
                     "plus its own domain term), per step.</p>"
                     + _img_tag(loss_plot(adapter_history, "adapter training"), "adapter losses"))
    return parts


def _captions(extras: dict[str, Any]) -> str:
    split: Split = extras["split"]
    synthetic: ImageDataset | None = extras.get("synthetic")
    source: ImageDataset | None = extras.get("source")
    images = {"source": None if source is None else source.images,
              "target": split.labelled.images,
              "synthetic": None if synthetic is None else synthetic.images,
              "unlabelled": split.unlabelled.images}
    rows = captioned_images({part: (images.get(part), texts)
                             for part, texts in extras["captions"].items()})
    prompts = "; synthetic images show their prompt" if synthetic is not None else ""
    return ("<h2>Images and their captions</h2><p class='muted'>A few of each set"
            f"{prompts}. All captions are in captions.jsonl.</p><table><tr><th>set</th><th>#</th><th>image</th>"
            "<th>caption</th></tr>" + "".join(
                f"<tr><td>{html.escape(part)}</td><td>{i}</td><td>"
                f"{_img_tag(png, f'{part} {i}')}</td><td>{html.escape(text)}</td></tr>"
                for part, i, png, text in rows) + "</table>")
