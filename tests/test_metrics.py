"""The metrics schema: metrics.json of every version in benchmarks/results/ loads and is
written back unchanged, and readers get typed fields."""

import json
from pathlib import Path

import pytest

from imgxfer.run.metrics import GeneratorMetrics, RunMetrics, SyntheticDelta, TargetMetrics, Timings

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SAVED = sorted(RESULTS.glob("**/metrics.json"))


def _without_none(x):
    if isinstance(x, dict):
        return {k: _without_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_without_none(v) for v in x]
    return x


def test_there_are_saved_metrics_to_read():
    assert len(SAVED) >= 20


@pytest.mark.parametrize("path", SAVED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_saved_metrics_json_round_trips(path):
    data = json.loads(path.read_text())
    metrics = RunMetrics.read(path)
    assert _without_none(metrics.to_json()) == _without_none(data)
    assert metrics.target.accuracy == data["target"]["accuracy"]
    for name, row in data["adapters"].items():
        assert metrics.adapters[name].accuracy == row["accuracy"]


def test_unknown_keys_are_kept_and_key_order_is_the_files():
    data = {"imgxfer_version": "0.0.1", "seed": 3, "device": "cpu", "data": {}, "encoder": {},
            "generator": {"name": "gan", "steps": 2, "cas": 0.5, "new_measure": 7},
            "adapters": {"finetune": {"steps": 1, "accuracy": 0.9, "macro_f1": 0.8,
                                      "unlabelled_im": None, "train_seconds": 1.0}},
            "synthetic_delta": {"finetune": {"with": 0.9, "without": 0.8, "delta": 0.1}},
            "target": {"accuracy": 0.9, "macro_f1": 0.8, "something_else": 1},
            "timings_s": {"encoder": 1.0}, "future_section": {"x": 1}}
    metrics = RunMetrics.from_json(data)
    assert metrics.generator.extra == {"new_measure": 7}
    assert metrics.synthetic_delta["finetune"].with_ == 0.9
    out = metrics.to_json()
    assert list(out) == list(data)
    assert _without_none(out) == _without_none(data)


def test_a_delta_is_with_minus_without():
    delta = SyntheticDelta.between(TargetMetrics(accuracy=0.9, macro_f1=0.8),
                                   TargetMetrics(accuracy=0.7, macro_f1=0.75), 50, False)
    assert delta.delta == pytest.approx(0.2) and delta.macro_f1_delta == pytest.approx(0.05)
    assert delta.to_json()["with"] == 0.9 and "with_" not in delta.to_json()


def test_unmeasured_quality_is_left_out_of_the_generator_section():
    gen = GeneratorMetrics(name="gan", synthesis="text", conditioning=["label"], steps=3,
                           synthetic_images=10)
    assert gen.to_json() == {"name": "gan", "synthesis": "text", "conditioning": ["label"],
                             "steps": 3, "synthetic_images": 10}


def test_timings_keep_the_order_stages_ran_in():
    timings = Timings()
    for name in ("encoder", "captioner", "adapter:finetune"):
        with timings.measure(name):
            pass
    assert list(timings.rounded()) == ["encoder", "captioner", "adapter:finetune"]
