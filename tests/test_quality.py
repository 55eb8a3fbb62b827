"""Generator quality measures: FID, KID and CAS behave as their definitions say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_bars

from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.data.dataset import ImageDataset, few_shot_split
from imgxfer.tasks.classify.quality import (
    classification_accuracy_score,
    feature_distances,
    fid_spread,
    frechet_distance,
    generator_quality,
    kernel_inception_distance,
    matched_real_subset,
    shot_copying,
)
from imgxfer.tasks.classify.stages.generate import filter_synthetic
from imgxfer.tasks.classify.synthesis import synthesis_prompts


def gaussian(n: int, d: int = 8, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_fid_identical_sets_is_zero_and_shift_is_measured():
    a = gaussian(400)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Shifting every feature by 1 adds |mu_a - mu_b|^2 = d = 8 (covariances unchanged).
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)
    # A second sample of the same distribution is close, a shifted one far.
    same, shifted = frechet_distance(a, gaussian(400, seed=1)), frechet_distance(a, gaussian(400, seed=1, shift=1))
    assert 0 < same < 0.5 < 7 < shifted
    # Doubling: |mu|^2 + tr(C) + tr(4C) - 2 tr(2C) = |mu|^2 + tr(C), exactly.
    expected = (a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0, abs=1e-8)


def test_fid_spread_shrinks_with_the_sample_and_is_seeded():
    small = fid_spread(gaussian(30, seed=4), gaussian(30, seed=5), rounds=20, seed=0)
    large = fid_spread(gaussian(600, seed=4), gaussian(600, seed=5), rounds=20, seed=0)
    assert 0 < large < small
    assert small == fid_spread(gaussian(30, seed=4), gaussian(30, seed=5), rounds=20, seed=0)


def test_kid_is_unbiased_near_zero_for_one_distribution():
    a, b = gaussian(300, seed=2), gaussian(300, seed=3)
    mean, std = kernel_inception_distance(a, b, subsets=40, subset_size=100, seed=0)
    assert abs(mean) < 3 * std / np.sqrt(40) + 0.02
    far, _ = kernel_inception_distance(a, gaussian(300, seed=3, shift=1), subsets=40,
                                       subset_size=100)
    assert far > 0.5 and far > 20 * abs(mean)
    # Seeded: the same seed gives the same subsets.
    assert kernel_inception_distance(a, b, subsets=5, seed=1) == kernel_inception_distance(a, b, subsets=5, seed=1)


def test_kid_reads_subsets_from_whole_kernels_as_it_computes_them_per_subset(monkeypatch):
    """The whole-kernel path (small sets) and the per-subset path (large sets) give the
    same values up to float rounding, from a direct per-subset computation."""
    import imgxfer.tasks.classify.quality as quality

    a, b = gaussian(120, seed=6), gaussian(90, seed=7, shift=0.3)
    rng = np.random.default_rng(5)
    expected = []
    for _ in range(6):
        x, y = a[rng.choice(120, 50, replace=False)], b[rng.choice(90, 50, replace=False)]
        k = [(p @ q.T / a.shape[1] + 1) ** 3 for p, q in ((x, x), (y, y), (x, y))]
        expected.append((k[0].sum() - np.trace(k[0]) + k[1].sum() - np.trace(k[1])) / (50 * 49)
                        - 2 * k[2].mean())
    whole = kernel_inception_distance(a, b, subsets=6, subset_size=50, seed=5)
    monkeypatch.setattr(quality, "KID_FULL_KERNEL", 10)
    per_subset = kernel_inception_distance(a, b, subsets=6, subset_size=50, seed=5)
    for got in (whole, per_subset):
        assert got == pytest.approx((np.mean(expected), np.std(expected, ddof=1)), rel=1e-9)


def test_distances_refuse_mismatched_or_too_small_sets():
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(gaussian(10, d=3), gaussian(10, d=4))
    with pytest.raises(ValueError, match="at least two rows"):
        kernel_inception_distance(gaussian(1), gaussian(10))


def test_feature_distances_in_encoder_space_with_per_class():
    real = tiny_bars("real", 20, seed=1)
    encoder = SmallCNN(width=4, input_size=16, seed=0)
    same = feature_distances(encoder, real, real, per_class=True, subsets=10)
    assert same["fid"] == pytest.approx(0, abs=1e-6)
    again = feature_distances(encoder, real, tiny_bars("again", 20, seed=2), subsets=10)
    shifted = ImageDataset(1 - real.images.tensor(), real.labels, real.class_names, "inverted")
    other = feature_distances(encoder, real, shifted, per_class=True, subsets=10)
    assert other["fid"] > 10 * again["fid"] > 0
    assert other["kid_mean"] > 10 * abs(again["kid_mean"])
    assert [r["class"] for r in other["per_class"]] == real.class_names
    assert all(r["n_real"] == r["n_fake"] == 20 for r in other["per_class"])


def test_cas_real_vs_real_is_high_and_shuffled_labels_near_chance():
    train, test = tiny_bars("train", 20, seed=1), tiny_bars("test", 15, seed=2)
    assert classification_accuracy_score(train, test, steps=40) > 0.9
    # Labels shuffled so that every shape carries each label equally often: they say
    # nothing about the images, and CAS falls to about chance (1/3).
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.arange(3).repeat(7)[torch.randperm(21, generator=g)][:20]
                        for _ in range(3)])
    noise = ImageDataset(train.images[:], labels, train.class_names, "shuffled")
    # Averaged over three seeds: one run on 45 test images scatters from 0.24 to 0.51.
    shuffled = [classification_accuracy_score(noise, test, steps=40, seed=s) for s in range(3)]
    assert sum(shuffled) / 3 < 0.5


def test_generator_quality_keys_and_rng_untouched():
    real_test, pool = tiny_bars("t", 10, seed=1), tiny_bars("p", 20, seed=2)
    fake = tiny_bars("f", 4, seed=3)
    encoder = SmallCNN(width=4, input_size=16, seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    out = generator_quality(encoder, fake, real_test, pool, cas_steps=20,
                            shots=pool.subset(torch.tensor([0, 20, 40])))
    assert torch.equal(before, torch.get_rng_state())
    assert {"cas", "cas_real", "fid", "kid_mean", "kid_std", "fid_real", "kid_real_mean",
            "per_class", "nearest_shot", "nearest_shot_real"} <= set(out)
    assert 0 <= out["cas"] <= 1 and 0 <= out["cas_real"] <= 1 and out["cas_real_images"] == 12
    # Their 95% intervals on the 30 test images hold them; the floor has a spread.
    assert out["cas_test_images"] == 30 and out["fid_real_spread"] > 0
    low, high = out["cas_interval"]
    assert low <= out["cas"] <= high and high - low > 0.1
    # Each class beside its own real floor (4 real pool images of it against the test).
    assert [r["class"] for r in out["per_class"]] == real_test.class_names
    assert all(r["fid_real"] >= 0 and "kid_real_mean" in r and r["n_reference"] == 4
               for r in out["per_class"])
    subset = matched_real_subset(pool, [1, 0, 5])
    assert subset.class_counts() == [1, 0, 5]


def test_shot_copying_tells_copies_from_new_images():
    split = few_shot_split(tiny_bars("t", 40, seed=1), 2, seed=0)
    # Noisy copies of the shots (what a generator that memorised them draws).
    reps = split.labelled.subset(torch.arange(len(split.labelled)).repeat(10))
    g = torch.Generator().manual_seed(0)
    copies = ImageDataset((reps.images.tensor() + 0.05 * torch.randn(reps.images.shape, generator=g)).clamp(0, 1),
                          reps.labels, reps.class_names, "copies")
    copied = shot_copying(copies, split.labelled, split.test)
    assert copied["nearest_shot"] == 1.0 and copied["nearest_shot_real"] < 0.5
    # New images of the same distribution score like the real reference.
    fresh = shot_copying(split.unlabelled, split.labelled, split.test)
    assert abs(fresh["nearest_shot"] - fresh["nearest_shot_real"]) < 0.15
    # Another size and channel count are converted; no shots: nothing to measure.
    rgb = ImageDataset(torch.nn.functional.interpolate(copies.images[:], size=24).expand(-1, 3, -1, -1),
                       copies.labels, copies.class_names, "rgb")
    assert shot_copying(rgb, split.labelled, split.test)["nearest_shot"] == 1.0
    assert shot_copying(copies, split.labelled.subset(torch.arange(0)), split.test) == {}


def test_synthesis_prompts_use_target_captions_of_the_same_class():
    labelled = tiny_bars("tiny-target", 2, seed=0)
    captions = [f"caption {i} of {labelled.class_names[int(y)]}" for i, y in enumerate(labelled.labels)]

    class Captioner:
        def caption(self, images, labels=None, **kw):
            return [f"image-free {int(y)}" for y in labels]

    labels = torch.tensor([0, 1, 2, 2, 0])
    prompts = synthesis_prompts(Captioner(), labels, labelled, captions, seed=0)
    assert all(p.endswith(labelled.class_names[int(y)]) for p, y in zip(prompts, labels, strict=True))
    assert prompts == synthesis_prompts(Captioner(), labels, labelled, captions, seed=0)
    # A class without labelled images falls back on the image-free caption.
    only_two = labelled.subset(torch.nonzero(labelled.labels < 2).flatten())
    prompts = synthesis_prompts(Captioner(), labels, only_two, captions[:4], seed=0)
    assert prompts[2:4] == ["image-free 2", "image-free 2"]


def test_synthetic_filter_drops_images_of_the_wrong_class():
    """Synthetic images whose label does not match their content get a low probability
    from the source + shots probe and are dropped; the rest are mostly kept."""
    source = tiny_bars("tiny-source", 20, seed=0)
    split = few_shot_split(tiny_bars("tiny-target", 20, seed=1, invert=True), 3, seed=0)
    fake = tiny_bars("synthetic", 10, seed=2, invert=True)
    wrong = torch.arange(len(fake)) % 2 == 1
    labels = torch.where(wrong, (fake.labels + 1) % 3, fake.labels)
    fake = ImageDataset(fake.images[:], labels, fake.class_names, "synthetic")
    encoder = SmallCNN(width=4, input_size=16, seed=0)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    kept_set, kept, info = filter_synthetic(fake, encoder, source, split, 0.5, torch.device("cpu"))
    assert torch.equal(before, torch.get_rng_state())
    assert kept[~wrong].float().mean() > 0.7 and kept[wrong].float().mean() < 0.3
    assert info["kept"] == int(kept.sum()) == len(kept_set) == sum(info["kept_per_class"])
    assert info["generated"] == 30 and info["threshold"] == 0.5
