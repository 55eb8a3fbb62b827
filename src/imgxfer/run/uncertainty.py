"""How far a figure measured on a few test images can be trusted: the Wilson score
interval (95%) of an accuracy (the target classifier's, CAS, CAS real), and the warnings
the report and the printed tables give when a figure is within noise of chance or below
its baseline.

Accuracy on 36 test images moves by about ±0.15 between two equally good classifiers,
so a CAS of 0.389 against a chance of 0.333 says nothing; the interval says so. Wilson's
interval (rather than p ± 1.96·sqrt(p(1-p)/n)) stays inside [0, 1] and keeps a width at
0 and 1, where small test sets often land."""

from __future__ import annotations

from collections.abc import Sequence

from scipy.stats import binomtest

from imgxfer.run.metrics import SOURCE_MODEL, GeneratorMetrics, RunMetrics, TargetMetrics

CONFIDENCE = 0.95
# FID counts as within noise of the real-to-real floor when it exceeds the floor by less
# than this many of the floor's bootstrap standard deviations (quality.fid_spread).
FID_NOISE_SDS = 2.0


def wilson_interval(accuracy: float | None, n: int | None) -> list[float] | None:
    """The 95% Wilson score interval ``[low, high]`` of an accuracy measured on ``n``
    images (``accuracy * n`` is rounded to the count correct), or None without a test."""
    if accuracy is None or not n:
        return None
    ci = binomtest(round(accuracy * n), n).proportion_ci(CONFIDENCE, method="wilson")
    return [float(ci.low), float(ci.high)]


def with_interval(value: float, interval: Sequence[float] | None) -> str:
    """``0.9833 (0.969-0.991)``: the value and its interval, for tables and lines."""
    if interval is None:
        return f"{value:.4f}"
    return f"{value:.4f} ({interval[0]:.3f}-{interval[1]:.3f})"


def accuracy_interval(target: TargetMetrics) -> list[float] | None:
    """The target accuracy's interval: stored in metrics.json, or (files written before
    intervals were) computed from the accuracy and the test size."""
    return target.accuracy_interval or wilson_interval(target.accuracy, target.n_test)


def cas_intervals(gen: GeneratorMetrics, n_test: int | None) -> tuple[list[float] | None,
                                                                     list[float] | None]:
    """CAS's and CAS real's intervals, stored or computed from the test size (CAS is
    measured on the run's target test split)."""
    n = gen.cas_test_images or n_test
    return (gen.cas_interval or wilson_interval(gen.cas, n),
            gen.cas_real_interval or wilson_interval(gen.cas_real, n))


# Label kept below this share of CAS real is warned about (a generator whose images keep
# their class as well as real images carry theirs scores near CAS real).
LABEL_KEPT_SHARE = 0.75


def noise_warnings(metrics: RunMetrics) -> list[str]:
    """One sentence per figure that is within noise of chance: the target accuracy or
    CAS whose interval contains chance (1 / classes), and an FID within the spread of
    the real-to-real floor (the encoder's features do not tell the images from real);
    and one when the synthetic images keep their label far less often than real images
    carry theirs (below :data:`LABEL_KEPT_SHARE` of CAS real): then many of them teach a
    wrong label, whatever their style. Then :func:`baseline_warnings`."""
    target, chance = metrics.target, metrics.target.chance
    out = baseline_warnings(metrics)
    interval = accuracy_interval(target)
    if chance is not None and _contains(interval, chance):
        # An interval is stored with the accuracy it was computed from, or computed from it.
        assert target.accuracy is not None
        out.append(f"target accuracy {with_interval(target.accuracy, interval)} is within "
                   f"noise of chance ({chance:.3f}) on {target.n_test} test images: the "
                   "classifier is not shown to beat guessing.")
    gen = metrics.generator
    if gen is None or gen.cas is None:
        return out
    cas, _ = cas_intervals(gen, target.n_test)
    if chance is not None and _contains(cas, chance):
        out.append(f"CAS {with_interval(gen.cas, cas)} is within noise of chance "
                   f"({chance:.3f}): the synthetic images may not show their class.")
    if gen.fid is not None and gen.fid_real is not None and gen.fid_real_spread is not None \
            and gen.fid - gen.fid_real <= FID_NOISE_SDS * gen.fid_real_spread:
        out.append(f"FID {gen.fid:.3f} is within the spread of the real-to-real floor "
                   f"({gen.fid_real:.3f} ± {gen.fid_real_spread:.3f}): at this sample size "
                   "the encoder's features do not tell the synthetic images from real "
                   "ones, so FID says little here.")
    if gen.label_kept is not None and gen.cas_real \
            and gen.label_kept < LABEL_KEPT_SHARE * gen.cas_real:
        out.append(f"label kept {gen.label_kept:.3f}: a classifier that gets {gen.cas_real:.3f} "
                   "of the real test images right gives only that share of the synthetic "
                   "images their intended class, so many of them teach a wrong label (see "
                   "the synthetic rows of samples.png).")
    return out


def baseline_warnings(metrics: RunMetrics) -> list[str]:
    """One sentence when the run's classifier (the first adapter) is below the source model
    on the same test images, and one per adapter that its synthetic images lowered
    (``--compare-synthetic``), each only beyond the 95% interval of the lower figure (a
    few test images either way is noise): a reader who sees only the headline would
    otherwise take both as gains."""
    n, out = metrics.target.n_test, []
    first = next(iter(metrics.adapters), None)
    source = (metrics.baselines or {}).get(SOURCE_MODEL)
    ours = metrics.adapters[first].accuracy if first is not None else None
    if ours is not None and source is not None and source.accuracy is not None:
        shown = _shown_if_below(ours, source.accuracy, n)
        if shown:
            out.append(f"{first} {shown} is below the source model's {source.accuracy:.4f} on "
                       "the same test images: in this run it did worse than the source encoder "
                       "with a logistic head (--compare tries other adapters; --seeds N tells "
                       "a loss from noise).")
    for name, delta in (metrics.synthetic_delta or {}).items():
        if delta.with_ is None or delta.without is None or delta.same_fit:
            continue
        shown = _shown_if_below(delta.with_, delta.without, n)
        if shown:
            out.append(f"{name} got {shown} with the synthetic images and {delta.without:.4f} "
                       "without: they lowered its accuracy in this run (--seeds N tells a loss "
                       "from noise).")
    return out


def _shown_if_below(value: float, other: float, n: int | None) -> str:
    """``value`` with its 95% interval on ``n`` images when ``other`` lies above that
    interval, else "" (the difference is noise, or there is no test set)."""
    interval = wilson_interval(value, n)
    return with_interval(value, interval) if interval is not None and other > interval[1] else ""


def _contains(interval: Sequence[float] | None, value: float) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]
