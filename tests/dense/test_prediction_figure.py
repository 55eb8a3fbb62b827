"""The dense run's predictions.png (imgxfer.tasks.dense.report.prediction_figure): a legend
names the class colours, and its text is large enough to read (issue 29, item 9)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from imgxfer.plugin.testing import tiny_scenes
from imgxfer.tasks.dense import report


def _drawn(monkeypatch, task: str) -> Figure:
    """The figure prediction_figure saves, kept for inspection."""
    kept, save = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        kept.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    test = tiny_scenes("tiny-scenes", 8, seed=0)
    if task == "segment":
        predictions = [m.clone() for m in test.masks]
    else:
        predictions = [{"boxes": b, "labels": lab, "scores": torch.ones(len(b))}
                       for b, lab in zip(test.boxes, test.box_labels, strict=True)]
    assert report.prediction_figure(test, {"finetune": predictions}, task).startswith(b"\x89PNG")
    return kept[0]


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_the_class_colours_have_a_legend_and_the_text_is_readable(monkeypatch, task):
    fig = _drawn(monkeypatch, task)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["square", "bar"]
    # Each legend patch has the colour that class is drawn in.
    colours = [tuple(h.get_facecolor()) for h in legend.legend_handles]
    assert colours == [report._colour(0, 2), report._colour(1, 2)]
    texts = [t for ax in fig.axes for t in ax.texts] + [ax.title for ax in fig.axes
                                                         if ax.get_title()]
    assert min(t.get_fontsize() for t in texts) >= report.BOX_PT >= 8
    if task == "detect":  # boxes are drawn in their class's colour
        boxes = [p for ax in fig.axes for p in ax.patches]
        assert {tuple(p.get_edgecolor()) for p in boxes} <= set(colours)
