"""How good and how useful generated images are: classification accuracy score (CAS) and
feature-space FID / KID between real and synthetic images.

- **CAS** (Ravuri & Vinyals 2019): train a fixed small classifier (a fresh
  :class:`~imgxfer.nn.nets.SmallConvNet` with a linear head, the same recipe every
  time) on synthetic images only and test it on real held-out images. Its reference,
  **CAS real**, is the same classifier trained on as many real images (class for class,
  where the real pool allows). CAS near CAS real means the synthetic images carry about
  as much class information as real ones; CAS near chance means they carry none.
- **FID** (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the
  features of the two sets. **KID** (Bińkowski et al. 2018): the unbiased estimate of
  the squared MMD with the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)^3``,
  averaged over random subsets (mean and standard deviation reported). KID is unbiased,
  so it is near 0 (and may be slightly negative) for two samples of one distribution,
  whatever their size; FID is biased upwards for small samples.

- **Label kept**: how often CAS real's classifier (trained on real target images, used
  for measuring only) gives a synthetic image the label it was made for, beside its
  accuracy on the real test images. For ``--synthesis translate`` it says how often the
  translation kept the source image's class.

- **Shot copying**: whether the generator draws new target images or copies its few
  labelled target shots. For each synthetic image, its nearest real target image of the
  same class (pixel L2, among the shots and the test split) is a shot or not;
  ``nearest_shot`` is the fraction that are, ``nearest_shot_real`` the same fraction for
  real held-out images (each test image against the shots and the other test images):
  what a generator of new target images would score. Near 1 against a small reference
  means the synthetic target images are variations of the shots, which adds little that
  the shots themselves do not.

Both distances are computed **in the feature space of the encoder they are given** (in
``imgxfer run`` the run's source-trained encoder), not in Inception-v3's pool features:
their values compare generators within one setup (same encoder, same real set) and are
**not comparable to published FID/KID numbers**.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from imgxfer.core.budget import Budget
from imgxfer.data.dataset import ImageDataset
from imgxfer.data.features import encode
from imgxfer.nn.classifier import Classifier
from imgxfer.nn.nets import SmallConvNet
from imgxfer.nn.training import evaluate_accuracy, train_supervised
from imgxfer.run.uncertainty import wilson_interval

if TYPE_CHECKING:
    from imgxfer.plugin.protocols import Encoder

# The CAS classifier: fixed so that scores from different runs compare.
CAS_WIDTH = 8
CAS_STEPS = 200
CAS_BATCH = 64
CAS_LR = 2e-3
# Bootstrap rounds of the real-to-real FID floor's spread (a few ms each at these sizes).
FID_ROUNDS = 20
# Up to this many rows in both sets together KID computes each kernel once (about 200 MB
# of float64 kernels at the limit, twice that while they are built); above it, once per
# subset.
KID_FULL_KERNEL = 5000


# --------------------------------------------------------------------------- distances
def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    return x


def frechet_distance(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (FID's formula,
    in whatever feature space the features come from):
    ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r^1/2 S_f S_r^1/2)^1/2)``.

    The matrix square root is taken through symmetric eigen-decompositions (no complex
    round-off, unlike ``scipy.linalg.sqrtm`` of the non-symmetric ``S_r S_f``). Each set
    needs at least two rows; with fewer rows than dimensions the covariances are singular,
    which the formula tolerates, but the value is then strongly biased upwards."""
    a, b = _as_numpy(real), _as_numpy(fake)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least two rows")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)
    return max(value, 0.0)


def kernel_inception_distance(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray,
                              *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: unbiased squared MMD with the kernel ``(x·y / d + 1)^3``, over ``subsets``
    random subsets of ``min(subset_size, len(real), len(fake))`` rows drawn from each set
    without replacement; returns (mean, standard deviation) over the subsets. Seeded."""
    a, b = _as_numpy(real), _as_numpy(fake)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("each feature set needs at least two rows")
    if subsets < 1:
        raise ValueError(f"KID needs at least one subset, got {subsets}")
    rng = np.random.default_rng(seed)
    picks = [(rng.choice(len(a), m, replace=False), rng.choice(len(b), m, replace=False))
             for _ in range(subsets)]
    if len(a) + len(b) <= KID_FULL_KERNEL:
        values = _subset_mmds(a, b, picks)
    else:  # each subset on its own: its rows are all of a[x] and b[y]
        everything = [(np.arange(m), np.arange(m))]
        values = np.array([_subset_mmds(a[x], b[y], everything)[0] for x, y in picks])
    return float(values.mean()), float(values.std(ddof=1)) if subsets > 1 else 0.0


def _subset_mmds(a: np.ndarray, b: np.ndarray, picks: Sequence[tuple[Any, Any]]) -> np.ndarray:
    """KID's unbiased MMD^2 for each pick of rows ``(x, y)`` of ``a`` and ``b`` (of equal
    count, without repeats). Each kernel is computed once and a subset's sums are read
    through 0/1 row masks (``u·K·u``), where three kernels per subset took seconds."""
    d = a.shape[1]
    kaa, kbb, kab = ((p @ q.T / d + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
    np.fill_diagonal(kaa, 0)  # the unbiased estimate leaves out k(x, x)
    np.fill_diagonal(kbb, 0)
    ua, ub = np.zeros((len(picks), len(a))), np.zeros((len(picks), len(b)))
    for i, (x, y) in enumerate(picks):
        ua[i, x] = 1
        ub[i, y] = 1
    m = len(picks[0][0])
    mmd: np.ndarray = ((((ua @ kaa) * ua).sum(1) + ((ub @ kbb) * ub).sum(1)) / (m * (m - 1))
                       - 2 * ((ua @ kab) * ub).sum(1) / (m * m))
    return mmd


def fid_spread(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, *,
               rounds: int = 20, seed: int = 0) -> float:
    """The standard deviation of :func:`frechet_distance` over ``rounds`` bootstrap
    resamples of both sets (rows drawn with replacement, seeded): how much FID moves
    with the sample alone. Beside the real-to-real floor it says whether a synthetic
    FID differs from the floor by more than noise (imgxfer.run.uncertainty)."""
    a, b = _as_numpy(real), _as_numpy(fake)
    rng = np.random.default_rng(seed)
    values = [frechet_distance(a[rng.integers(0, len(a), len(a))],
                               b[rng.integers(0, len(b), len(b))]) for _ in range(rounds)]
    return float(np.std(values, ddof=1))


def feature_distances(encoder: nn.Module, real: ImageDataset, fake: ImageDataset,
                      device: torch.device | str = "cpu", *, per_class: bool = False,
                      subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0, spread_rounds: int = 0) -> dict[str, Any]:
    """FID and KID between ``real`` and ``fake`` images in ``encoder``'s feature space
    (:func:`imgxfer.data.features.encode`: eval mode, the encoder's own preprocessing).

    Returns ``fid``, ``kid_mean``, ``kid_std`` and ``n_real`` / ``n_fake``; with
    ``spread_rounds`` also ``fid_spread`` (:func:`fid_spread`); with
    ``per_class`` also ``per_class``: one ``{class, fid, kid_mean, n_real, n_fake}`` per
    class with at least two images in both sets (classes compared with themselves).
    Values are in this encoder's feature space, not Inception's: see the module docstring.
    """
    fr = encode(encoder, real.images, device)
    ff = encode(encoder, fake.images, device)
    kid_mean, kid_std = kernel_inception_distance(fr, ff, subsets=subsets,
                                                  subset_size=subset_size, seed=seed)
    out: dict[str, Any] = {"fid": frechet_distance(fr, ff), "kid_mean": kid_mean,
                           "kid_std": kid_std, "n_real": len(real), "n_fake": len(fake)}
    if spread_rounds:
        out["fid_spread"] = fid_spread(fr, ff, rounds=spread_rounds, seed=seed)
    if per_class:
        rows = []
        for c, name in enumerate(real.class_names):
            r, f = fr[real.labels == c], ff[fake.labels == c]
            if len(r) < 2 or len(f) < 2:
                continue
            k_mean, _ = kernel_inception_distance(r, f, subsets=max(1, subsets // 10),
                                                  subset_size=subset_size, seed=seed + c)
            rows.append({"class": name, "fid": frechet_distance(r, f), "kid_mean": k_mean,
                         "n_real": int(len(r)), "n_fake": int(len(f))})
        out["per_class"] = rows
    return out


# --------------------------------------------------------------------------- CAS
def train_classifier(train: ImageDataset, *, steps: int = CAS_STEPS, width: int = CAS_WIDTH,
                     input_size: int | None = None, seed: int = 0,
                     device: torch.device | str = "cpu") -> Classifier:
    """The fixed CAS classifier: a freshly initialised :class:`~imgxfer.nn.nets.SmallConvNet`
    (``width``) with a linear head, trained from scratch on ``train`` for ``steps`` steps
    (:func:`imgxfer.nn.training.train_supervised`, batch 64). ``input_size`` defaults to the
    images' side (at least 8). The global RNG is left as it was."""
    device = torch.device(device)
    size = input_size or max(8, int(train.images.shape[-1]))
    channels = 3 if train.images.shape[1] >= 3 else 1
    with torch.random.fork_rng(devices=[]):
        encoder = SmallConvNet(width=width, input_size=size, in_channels=channels, seed=seed)
        model = Classifier(encoder, train.num_classes).to(device)
    train_supervised(model, encoder.preprocess, train.images, train.labels,
                     budget=Budget(steps), lr=CAS_LR, batch_size=CAS_BATCH, seed=seed,
                     generator=torch.Generator().manual_seed(seed), device=device)
    model.eval()
    return model


def classification_accuracy_score(train: ImageDataset, test: ImageDataset, *,
                                  steps: int = CAS_STEPS, width: int = CAS_WIDTH, seed: int = 0,
                                  device: torch.device | str = "cpu") -> float:
    """Accuracy on ``test`` of the fixed classifier (:func:`train_classifier`) trained on
    ``train`` only: CAS when ``train`` is synthetic and ``test`` real."""
    size = max(8, int(test.images.shape[-1]))
    model = train_classifier(train, steps=steps, width=width, input_size=size, seed=seed,
                             device=device)
    return evaluate_accuracy(model, test.images, test.labels, torch.device(device),
                             preprocess=cast("Encoder", model.encoder).preprocess)


def label_agreement(synthetic: ImageDataset, reference: ImageDataset, real_test: ImageDataset,
                    *, steps: int, seed: int, device: torch.device | str) -> dict[str, float]:
    """The CAS classifier trained on real target images (``reference``, used for measuring
    only): ``cas_real``, its accuracy on ``real_test``, and ``label_kept``, how often it
    gives a synthetic image the label it was made for. For translated source images this
    says how often translation kept the digit (or object) its label names; a generator
    that keeps labels as well as real images carry them scores near ``cas_real``."""
    size = max(8, int(real_test.images.shape[-1]))
    model = train_classifier(reference, steps=steps, input_size=size, seed=seed, device=device)
    device = torch.device(device)
    prep = cast("Encoder", model.encoder).preprocess  # Classifier.encoder is typed nn.Module
    return {"cas_real": evaluate_accuracy(model, real_test.images, real_test.labels, device,
                                          preprocess=prep),
            "label_kept": evaluate_accuracy(model, synthetic.images, synthetic.labels, device,
                                            preprocess=prep)}


def matched_real_subset(pool: ImageDataset, counts: Sequence[int], *, seed: int = 0) -> ImageDataset:
    """A seeded subset of ``pool`` with ``counts[c]`` images of class ``c`` (all of the
    class when it has fewer): the real reference set for CAS real."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c, n in enumerate(counts):
        index = torch.nonzero(pool.labels == c).flatten()
        keep.append(index[torch.randperm(len(index), generator=g)[:n]])
    return pool.subset(torch.cat(keep))


def shot_copying(synthetic: ImageDataset, shots: ImageDataset,
                 test: ImageDataset) -> dict[str, float]:
    """``nearest_shot`` and ``nearest_shot_real`` (see the module docstring), over the
    classes that have shots and at least two test images; {} when none has. Synthetic
    images of another size or channel count are resized and converted to the test's."""
    from imgxfer.nn.preprocess import prepare

    c = test.images.shape[1]  # compared in the test images' channels and size, unnormalised
    images = prepare(synthetic.images.tensor(), channels=c, size=test.images.shape[-2:],
                     mean=[0.0] * c, std=[1.0] * c)
    hits, total, real_hits, real_total = 0, 0, 0, 0
    for c in range(test.num_classes):
        shot_c = shots.images[shots.labels == c].float().flatten(1)
        test_c = test.images[test.labels == c].float().flatten(1)
        fake_c = images[synthetic.labels == c].flatten(1)
        if len(shot_c) == 0 or len(test_c) < 2:
            continue
        real = torch.cat([shot_c, test_c])
        if len(fake_c):
            hits += int((torch.cdist(fake_c, real).argmin(1) < len(shot_c)).sum())
            total += len(fake_c)
        d = torch.cdist(test_c, real)
        d[torch.arange(len(test_c)), len(shot_c) + torch.arange(len(test_c))] = float("inf")
        real_hits += int((d.argmin(1) < len(shot_c)).sum())
        real_total += len(test_c)
    if not total:
        return {}
    return {"nearest_shot": hits / total, "nearest_shot_real": real_hits / real_total}


def generator_quality(encoder: nn.Module, synthetic: ImageDataset, real_test: ImageDataset,
                      real_train: ImageDataset, *, cas_steps: int = CAS_STEPS,
                      seed: int = 0, device: torch.device | str = "cpu",
                      per_class: bool = True,
                      shots: ImageDataset | None = None) -> dict[str, Any]:
    """Everything ``imgxfer run`` reports about a generator's images.

    ``cas``: fixed classifier trained on ``synthetic``, tested on ``real_test``;
    ``cas_real``: the same classifier trained on a class-matched subset of ``real_train``
    (as many images per class as there are synthetic ones, where ``real_train`` has them;
    ``cas_real_images`` says how many); ``cas_interval`` / ``cas_real_interval``: their
    95% Wilson intervals on ``cas_test_images``; ``fid``, ``kid_mean``, ``kid_std`` between
    ``real_test`` and ``synthetic`` in ``encoder``'s feature space, and ``fid_real`` /
    ``kid_real_mean`` between the real reference subset and ``real_test`` (the floor a
    perfect generator would reach with that many images; ``fid_real_spread`` its bootstrap
    standard deviation, :func:`fid_spread`), overall and in ``per_class``
    (``fid_real`` / ``kid_real_mean`` from ``n_reference`` images beside each class's
    ``fid`` / ``kid_mean``). With the labelled target ``shots``, also
    :func:`shot_copying`. The global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        counts = torch.bincount(synthetic.labels, minlength=synthetic.num_classes).tolist()
        reference = matched_real_subset(real_train, counts, seed=seed)
        out: dict[str, Any] = {
            "cas": classification_accuracy_score(synthetic, real_test, steps=cas_steps,
                                                 seed=seed, device=device),
            "cas_real_images": len(reference),
            "cas_steps": cas_steps,
        }
        out.update(label_agreement(synthetic, reference, real_test, steps=cas_steps,
                                   seed=seed, device=device))
        # How far CAS and CAS real can be trusted on this many test images.
        out.update(cas_test_images=len(real_test),
                   cas_interval=wilson_interval(out["cas"], len(real_test)),
                   cas_real_interval=wilson_interval(out["cas_real"], len(real_test)))
        dist = feature_distances(encoder, real_test, synthetic, device, per_class=per_class,
                                 seed=seed)
        out.update(fid=dist["fid"], kid_mean=dist["kid_mean"], kid_std=dist["kid_std"])
        floors: dict[str, dict[str, Any]] = {}
        if len(reference) >= 2:
            floor = feature_distances(encoder, real_test, reference, device,
                                      per_class=per_class, seed=seed, spread_rounds=FID_ROUNDS)
            out.update(fid_real=floor["fid"], kid_real_mean=floor["kid_mean"],
                       fid_real_spread=floor["fid_spread"])
            floors = {r["class"]: r for r in floor.get("per_class", [])}
        if shots is not None and len(shots):
            out.update(shot_copying(synthetic, shots, real_test))
        if per_class:  # each class beside its own floor, where the reference has the class
            out["per_class"] = []
            for r in dist["per_class"]:
                f = floors.get(r["class"])
                out["per_class"].append(r if f is None else {
                    **r, "fid_real": f["fid"], "kid_real_mean": f["kid_mean"],
                    "n_reference": f["n_fake"]})
        out["feature_space"] = f"{type(encoder).__name__} ({getattr(encoder, 'weights_source', '?')})"
    return out
