"""Few-shot splits and class alignment."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bars

from imgxfer.core.errors import UserError
from imgxfer.data.dataset import ImageDataset, align_classes, few_shot_split


def test_split_is_stratified_disjoint_and_seeded():
    ds = tiny_bars("t", n_per_class=20)
    ds.images.data[:, 0, 0, 0] = torch.arange(len(ds)).float()  # tag each image by its index
    split = few_shot_split(ds, 4, test_fraction=0.25, seed=3)
    assert split.labelled.class_counts() == [4, 4, 4]
    assert split.test.class_counts() == [5, 5, 5]
    assert split.unlabelled.class_counts() == [11, 11, 11]
    tags = [set(p.images[:][:, 0, 0, 0].tolist()) for p in (split.labelled, split.unlabelled, split.test)]
    assert not (tags[0] & tags[1] or tags[0] & tags[2] or tags[1] & tags[2])
    again = few_shot_split(ds, 4, test_fraction=0.25, seed=3)
    assert torch.equal(again.labelled.images[:], split.labelled.images[:])
    other = few_shot_split(ds, 4, test_fraction=0.25, seed=4)
    assert not torch.equal(other.labelled.images[:], split.labelled.images[:])


def test_too_many_shots_names_the_class():
    ds = tiny_bars("t", n_per_class=10)
    with pytest.raises(UserError, match=r"class 'horizontal' of 't' has 10 images: too few for 9 shots plus 3 held out .*at most 7 shots"):
        few_shot_split(ds, 9, test_fraction=0.3)


def test_one_class_refused():
    with pytest.raises(UserError, match="has 1 class"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), ["only"], "x")


def test_align_reorders_source_labels():
    target = tiny_bars("t", n_per_class=2)
    source = ImageDataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 2]), ["dot", "horizontal", "vertical"], "s")
    aligned = align_classes(source, target)
    assert aligned.class_names == target.class_names
    assert [aligned.class_names[i] for i in aligned.labels] == ["dot", "horizontal", "vertical"]


def test_align_mismatch_lists_differences():
    target = tiny_bars("t", n_per_class=2)
    source = ImageDataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 2]), ["dot", "horizontal", "ring"], "s")
    with pytest.raises(UserError, match="only in target: vertical; only in source: ring"):
        align_classes(source, target)


def test_file_paths_follow_split_and_alignment_into_captions(tmp_path):
    import json

    from imgxfer.tasks.classify.report import write_captions

    images = torch.rand(12, 1, 8, 8)
    labels = torch.arange(12) % 2
    paths = [f"/data/{'ab'[int(y)]}/{i}.png" for i, y in enumerate(labels.tolist())]
    data = ImageDataset(images, labels, ["a", "b"], "files", paths=paths)
    split = few_shot_split(data, 2, seed=1)
    for part in (split.labelled, split.unlabelled, split.test):
        for image, y, path in zip(part.images[:], part.labels, part.paths, strict=True):
            i = paths.index(path)
            assert torch.equal(image, images[i]) and y == labels[i]
    source = align_classes(ImageDataset(images, 1 - labels, ["b", "a"], "src", paths=paths),
                           data)
    assert source.paths == paths and torch.equal(source.labels, labels)

    out = tmp_path / "captions.jsonl"
    write_captions(out, {"target": ["t"] * len(split.labelled),
                         "unlabelled": ["u"] * len(split.unlabelled)}, source, split)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == split.labelled.paths + split.unlabelled.paths
    assert all(r["path"].split("/")[2] == r["label"] for r in rows if r["set"] == "target")


def test_glyph_layout_of_the_digit_datasets_survives_splitting():
    from imgxfer.components.datasets.digits import digits

    data = digits()
    assert data.layout == "glyph"
    split = few_shot_split(data, 2, seed=0)
    assert split.labelled.layout == split.test.layout == "glyph"


def test_paths_must_match_images():
    with pytest.raises(ValueError, match="paths"):
        ImageDataset(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], "x", paths=["p"])
