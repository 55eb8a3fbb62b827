"""Confidence intervals and the within-noise-of-chance warnings (imgxfer.run.uncertainty),
checked against Wilson intervals worked out by hand."""

import json

import pytest

from imgxfer.run.metrics import GeneratorMetrics, RunMetrics, TargetMetrics
from imgxfer.run.uncertainty import (
    accuracy_interval,
    cas_intervals,
    noise_warnings,
    wilson_interval,
    with_interval,
)
from imgxfer.tasks.classify.evaluation import classification_metrics


# By hand, z = 1.96: centre (p + z²/2n) / (1 + z²/n), half-width
# z / (1 + z²/n) · sqrt(p(1 - p)/n + z²/4n²).
@pytest.mark.parametrize("correct, n, low, high", [
    (14, 36, 0.2478, 0.5514),  # the noise GAN: CAS 0.389 on 36 images
    (0, 10, 0.0, 0.2775),      # centre = half-width = 0.1388
    (10, 10, 0.7225, 1.0),
    (59, 60, 0.9114, 0.9971),
])
def test_wilson_interval_matches_hand_computed_values(correct, n, low, high):
    got = wilson_interval(correct / n, n)
    assert got == pytest.approx([low, high], abs=1e-4)


def test_no_interval_without_a_test_set():
    assert wilson_interval(None, 36) is None and wilson_interval(0.5, 0) is None


def test_value_and_interval_read_as_in_the_tables():
    assert with_interval(59 / 60, wilson_interval(59 / 60, 60)) == "0.9833 (0.911-0.997)"
    assert with_interval(0.5, None) == "0.5000"


def test_classification_metrics_carry_the_accuracy_interval():
    m = classification_metrics([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], [0] * 10, ["a", "b", "c"])
    assert m["accuracy"] == 0.4
    assert m["accuracy_interval"] == pytest.approx([0.1682, 0.6873], abs=1e-4)


def test_files_without_intervals_still_read_and_get_them_computed():
    old = TargetMetrics.from_json({"accuracy": 14 / 36, "n_test": 36, "chance": 1 / 3})
    assert old.accuracy_interval is None
    assert accuracy_interval(old) == pytest.approx([0.2478, 0.5514], abs=1e-4)
    gen = GeneratorMetrics.from_json({"cas": 0.5, "cas_real": 1.0})
    cas, real = cas_intervals(gen, 10)
    assert cas == pytest.approx([0.2366, 0.7634], abs=1e-4) and real[1] == 1.0
    # Written back, the new fields are left out where they were never measured.
    assert "cas_interval" not in gen.to_json()


def _run(accuracy: float, n: int, generator: dict | None) -> RunMetrics:
    return RunMetrics.from_json({
        "target": {"accuracy": accuracy, "n_test": n, "chance": 1 / 3},
        "adapters": {"linear": {"accuracy": accuracy}},
        **({"generator": generator} if generator else {})})


def test_a_noise_generator_is_flagged_and_a_good_run_is_not():
    # The 30-step GAN: CAS 0.389 on 36 images, 3 classes, FID 0.43 beside a
    # floor of 0.28 that moves by 0.1 between resamples.
    noise = _run(0.9, 36, {"cas": 14 / 36, "cas_real": 0.95, "fid": 0.43, "fid_real": 0.28,
                           "fid_real_spread": 0.1})
    warnings = noise_warnings(noise)
    assert len(warnings) == 2
    assert warnings[0].startswith("CAS 0.3889 (0.248-0.551) is within noise of chance (0.333)")
    assert warnings[1].startswith("FID 0.430 is within the spread of the real-to-real floor")
    good = _run(0.9, 36, {"cas": 0.8, "cas_real": 0.95, "fid": 2.0, "fid_real": 0.28,
                          "fid_real_spread": 0.1})
    assert noise_warnings(good) == []


def test_synthetic_images_that_lose_their_label_are_flagged():
    """The default run's translations: label kept 0.545 against CAS real 0.955."""
    lossy = _run(0.85, 1500, {"cas": 0.6, "cas_real": 0.955, "label_kept": 0.545})
    (warning,) = noise_warnings(lossy)
    assert warning.startswith("label kept 0.545: a classifier that gets 0.955 of the real")
    kept = _run(0.85, 1500, {"cas": 0.6, "cas_real": 0.955, "label_kept": 0.9})
    assert noise_warnings(kept) == []


def test_target_accuracy_near_chance_on_a_small_test_set_is_flagged():
    (warning,) = noise_warnings(_run(0.5, 12, None))  # 6 of 12: (0.254-0.746) holds 1/3
    assert "target accuracy 0.5000 (0.254-0.746)" in warning and "12 test images" in warning
    assert noise_warnings(_run(0.5, 400, None)) == []  # the same accuracy, measured well


def test_intervals_round_trip_through_metrics_json():
    run = _run(0.9, 36, {"cas": 0.5, "cas_interval": [0.3, 0.7], "fid_real_spread": 0.1})
    again = RunMetrics.from_json(json.loads(json.dumps(run.to_json())))
    assert again.generator.cas_interval == [0.3, 0.7]
    assert again.generator.fid_real_spread == 0.1 and not again.generator.extra


def test_a_run_below_its_source_model_or_lowered_by_synthetic_images_says_so():
    """The headline alone would read as a gain: an adapter below the source model on the
    same test images, and synthetic images that lowered an adapter, are each a sentence
    when beyond the 95% interval; an adapter that does not read synthetic images
    (same_fit) is not, and neither is a difference of a few test images."""
    def run(first, source, deltas):
        return RunMetrics.from_json({
            "target": {"accuracy": first, "n_test": 500, "chance": 0.1},
            "adapters": {"finetune": {"accuracy": first}, "coral": {"accuracy": 0.5}},
            "baselines": {"source model": {"accuracy": source}},
            "synthetic_delta": deltas})

    lowered = {"finetune": {"with": 0.61, "without": 0.68, "delta": -0.07},
               "coral": {"with": 0.5, "without": 0.6, "delta": -0.1, "same_fit": True}}
    assert noise_warnings(run(0.61, 0.70, lowered)) == [
        "finetune 0.6100 (0.567-0.652) is below the source model's 0.7000 on the same test "
        "images: in this run it did worse than the source encoder with a logistic head "
        "(--compare tries other adapters; --seeds N tells a loss from noise).",
        "finetune got 0.6100 (0.567-0.652) with the synthetic images and 0.6800 without: "
        "they lowered its accuracy in this run (--seeds N tells a loss from noise)."]
    # 0.61 against 0.63 is 10 of 500 test images, inside the interval: no warning.
    close = {"finetune": {"with": 0.61, "without": 0.63, "delta": -0.02}}
    assert noise_warnings(run(0.61, 0.63, close)) == []
    better = {"finetune": {"with": 0.9, "without": 0.85, "delta": 0.05}}
    assert noise_warnings(run(0.9, 0.655, better)) == []
    # A file without the with/without figures is read, not a crash.
    assert noise_warnings(run(0.9, 0.655, {"finetune": {"delta": -0.1}})) == []
