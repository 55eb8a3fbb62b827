"""folder:PATH and csv:PATH: image files of any Pillow format become one ImageDataset;
unreadable files are skipped with a note (or refused when strict), bad layouts are one
clear error."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgxfer.components.datasets.csvlist import csv_list
from imgxfer.components.datasets.folder import folder
from imgxfer.core.errors import UserError
from imgxfer.plugin.registry import Registry


def _jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_tree(root: Path) -> Path:
    """cat: red PNG, grey JPEG, RGBA PNG, truncated JPEG; dog: grey PNG, 16-bit PNG,
    corrupt PNG, a .txt; plus hidden files and loose files that must be ignored."""
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "more").mkdir(parents=True)
    Image.new("RGB", (40, 24), (255, 0, 0)).save(root / "cat" / "a.png")
    (root / "cat" / "b.jpg").write_bytes(_jpeg_bytes(Image.new("RGB", (64, 64), (128, 128, 128))))
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # left: transparent red
    rgba.paste((0, 0, 0, 255), (16, 0, 32, 32))  # right: opaque black
    rgba.save(root / "cat" / "c.png")
    full = _jpeg_bytes(Image.effect_noise((256, 256), 60).convert("RGB"))
    (root / "cat" / "d_cut.jpg").write_bytes(full[: len(full) // 2])
    Image.new("L", (30, 30), 200).save(root / "dog" / "e.png")
    Image.new("I;16", (30, 30), 32768).save(root / "dog" / "more" / "f16.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    (root / "dog" / "readme.txt").write_text("not an image\n")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / ".thumbs").mkdir()
    Image.new("L", (8, 8), 0).save(root / ".thumbs" / "x.png")
    (root / "LICENSE.txt").write_text("loose files beside the class folders are ignored\n")
    return root


def load_quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_folder_reads_formats_skips_unreadable_and_notes_it(tmp_path):
    root = make_tree(tmp_path / "pets")
    with pytest.warns(UserWarning, match=r"skipped 3 of 8 files that are not readable images"):
        ds = folder(str(root))
    # Sorted: cat/a.png cat/b.jpg cat/c.png | dog/e.png dog/more/f16.png
    assert ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 3, 32, 32)  # one colour image -> 3 channels
    assert ds.images[:].dtype == torch.float32
    assert 0 <= ds.images[:].min() and ds.images[:].max() <= 1
    assert ds.domain == "pets" and ds.description == ""
    red, grey, rgba, light, deep = ds.images[:]
    assert torch.allclose(red[:, 16, 16], torch.tensor([1.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(grey, torch.full_like(grey, 128 / 255), atol=0.02)
    assert torch.allclose(light, torch.full_like(light, 200 / 255), atol=0.01)
    assert torch.allclose(deep, torch.full_like(deep, 0.5), atol=0.01)  # 16 bits: / 65535
    # Transparent left half composited onto the white background, red does not leak.
    assert torch.allclose(rgba[:, :, :12], torch.ones(3, 32, 12), atol=0.01)
    assert rgba[:, :, 20:].max() < 0.01
    (note,) = ds.notes
    for name in ("'cat/d_cut.jpg': image file is truncated", "'dog/broken.png'",
                 "'dog/readme.txt': not an image format Pillow reads"):
        assert name in note
    assert ".DS_Store" not in note and "LICENSE" not in note


def test_folder_channels_background_and_grey_detection(tmp_path):
    root = make_tree(tmp_path / "pets")
    grey = load_quietly(folder, str(root), channels=1, background="black", size=16)
    assert grey.images.shape == (5, 1, 16, 16)
    assert grey.images[:][0, 0, 8, 8] == pytest.approx(0.299, abs=0.01)  # red -> luma
    assert grey.images[:][2].max() < 0.01  # transparent onto black: all black
    only_grey = tmp_path / "grey"
    for cls, value in (("a", 40), ("b", 220)):
        (only_grey / cls).mkdir(parents=True)
        Image.new("L", (20, 20), value).save(only_grey / cls / "1.png")
        # An RGB JPEG whose content is grey counts as greyscale too.
        (only_grey / cls / "2.jpg").write_bytes(_jpeg_bytes(Image.new("RGB", (20, 20), (value,) * 3)))
    ds = folder(str(only_grey))
    assert ds.images.shape == (4, 1, 32, 32) and ds.notes == []
    assert ds.images[:][:2].mean() == pytest.approx(40 / 255, abs=0.02)
    assert ds.images[:][2:].mean() == pytest.approx(220 / 255, abs=0.02)
    assert folder(str(only_grey), channels=3).images.shape == (4, 3, 32, 32)
    inverted = folder(str(only_grey), invert=True)  # dark ink on paper -> light on dark
    torch.testing.assert_close(inverted.images[:], 1 - ds.images[:])


def test_folder_fit_modes_and_exif_orientation(tmp_path):
    root = tmp_path / "shapes"
    for cls in ("wide", "turned"):
        (root / cls).mkdir(parents=True)
    Image.new("L", (64, 32), 255).save(root / "wide" / "w.png")
    # Stored wide: left half white, right half black; EXIF 6 says "rotate 90 degrees
    # clockwise to display", so upright it is tall with the white half on top.
    stored = Image.new("L", (64, 32), 0)
    stored.paste(255, (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(root / "turned" / "t.jpg", exif=exif, quality=98)
    crop = folder(str(root), fit="crop", background="black").images[:]
    pad = folder(str(root), fit="pad", background="black").images[:]
    stretch = folder(str(root), fit="stretch").images[:]
    upright = stretch[0, 0]  # classes sorted: turned, wide
    assert upright[:12].mean() > 0.95 and upright[-12:].mean() < 0.05
    assert crop[1].min() > 0.99 and stretch[1].min() > 0.99
    assert pad[1, 0, 12:20].min() > 0.99  # the wide image, centred
    assert pad[1, 0, :6].max() < 0.01 and pad[1, 0, -6:].max() < 0.01  # black bands
    assert folder(str(root), fit="pad").images[:][1, 0, :6].min() > 0.99  # white bands


def test_folder_glyph_fit_puts_ink_in_the_mnist_layout(tmp_path):
    """Dark strokes on white paper, small and off-centre in a big scan: with invert and
    fit=glyph they come out like digits/mnist images (ink box 20/28 of the side, centred
    by mass), in both a greyscale and an RGB file."""
    root = tmp_path / "scans"
    for cls, mode in (("grey", "L"), ("colour", "RGB")):
        (root / cls).mkdir(parents=True)
        scan = Image.new(mode, (200, 120), 255 if mode == "L" else (250, 250, 250))
        scan.paste(0 if mode == "L" else (0, 0, 0), (10, 20, 30, 80))  # a 20 x 60 bar
        scan.save(root / cls / "scan.png")
    data = folder(str(root), fit="glyph", invert=True, size=28)
    assert data.layout == "glyph" and folder(str(root)).layout == ""
    for image in data.images[:]:
        ink = image.mean(0) > 0.5
        ys, xs = torch.nonzero(ink, as_tuple=True)
        assert ys.max() - ys.min() + 1 == 20  # the long side: 20/28 of 28 pixels
        assert 6 <= xs.max() - xs.min() + 1 <= 8  # the aspect kept (20 x 60 -> ~7 x 20)
        mass = image.mean(0)
        cy = (mass.sum(1) * torch.arange(28)).sum() / mass.sum()
        cx = (mass.sum(0) * torch.arange(28)).sum() / mass.sum()
        assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert data.images.shape[1] == 1  # the colour file was grey content


def test_folder_strict_refuses_the_first_unreadable_file(tmp_path):
    root = make_tree(tmp_path / "pets")
    with pytest.raises(UserError, match=r"cannot read image 'cat/d_cut\.jpg' \(image file is "
                                        r"truncated.*leave out strict=true"):
        folder(str(root), strict=True)


@pytest.mark.parametrize("layout, message", [
    ("missing", r"no such folder"),
    ("file", r"this is a file, not a folder with one sub-folder of images per class"),
    ("flat", r"no class sub-folders \(it holds 2 files directly\)"),
    ("nothing", r"no class sub-folders \(it is empty\)"),
    ("single", r"only one class sub-folder \('a'\); transfer needs at least two classes"),
    ("empty-class", r"class folder 'b' is empty"),
    ("hidden-only", r"class folder 'b' is empty"),
    ("unreadable-class", r"class 'b' has no readable images \(1 unreadable file skipped\)"),
])
def test_folder_layout_errors_are_one_sentence(tmp_path, layout, message):
    root = tmp_path / "data"
    png = Image.new("L", (8, 8), 100)
    if layout == "file":
        root.write_text("x")
    elif layout == "flat":
        root.mkdir()
        png.save(root / "1.png")
        png.save(root / "2.png")
    elif layout == "nothing":
        root.mkdir()
    elif layout != "missing":
        (root / "a").mkdir(parents=True)
        png.save(root / "a" / "1.png")
        if layout != "single":
            (root / "b").mkdir()
        if layout == "hidden-only":
            png.save(root / "b" / ".hidden.png")
        if layout == "unreadable-class":
            (root / "b" / "bad.png").write_bytes(b"nope")
    with pytest.raises(UserError, match=message) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder(str(root))
    text = str(info.value)
    assert text.startswith(f"dataset 'folder:{root}': ") and text.endswith(".")
    assert "\n" not in text


def test_folder_subsample_is_seeded_and_deterministic(tmp_path):
    root = tmp_path / "many"
    for c, cls in enumerate(("x", "y", "z")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), 10 * i + 70 * c).save(root / cls / f"{i}.png")
    full = folder(str(root), size=8)
    assert torch.equal(full.images[:], folder(str(root), size=8).images[:])
    a = folder(str(root), size=8, n_per_class=2, seed=1)
    b = folder(str(root), size=8, n_per_class=2, seed=1)
    c = folder(str(root), size=8, n_per_class=2, seed=2)
    assert a.class_counts() == [2, 2, 2]
    assert torch.equal(a.images[:], b.images[:]) and not torch.equal(a.images[:], c.images[:])
    short = folder(str(root), size=8, n_per_class=10)
    assert len(short) == 18 and "fewer than n_per_class=10" in short.notes[0]


@pytest.mark.parametrize("options, message", [
    ({"size": 2}, r"size must be a whole number of pixels between 4 and 1024"),
    ({"size": "abc"}, r"size must be a whole number .* got 'abc'"),
    ({"channels": 2}, r"channels must be 0 \(auto\), 1 or 3"),
    ({"background": "grey"}, r"background must be one of 'white', 'black'"),
    ({"fit": "zoom"}, r"fit must be one of 'crop', 'pad', 'stretch'"),
    ({"n_per_class": -1}, r"n_per_class must be 0 \(all\) or more"),
    ({"invert": "yes"}, r"option invert must be true or false, got 'yes'"),
])
def test_invalid_options_are_refused_before_reading(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        folder(str(tmp_path / "does-not-matter"), **options)


def test_family_names_reach_the_factories_through_the_registry(tmp_path):
    root = make_tree(tmp_path / "pets")
    registry = Registry()
    registry.add("datasets", "folder:", folder, "builtin")
    registry.add("datasets", "csv:", csv_list, "builtin")
    ds = load_quietly(registry.build, "datasets", f"folder:{root}", {"size": 12, "channels": 1})
    assert ds.images.shape == (5, 1, 12, 12)
    with pytest.raises(UserError, match="option size must be int"):
        registry.build("datasets", f"folder:{root}", {"size": "big"})
    with pytest.raises(UserError, match="has no option 'colour'"):
        registry.build("datasets", f"folder:{root}", {"colour": 1})
    assert registry.get("datasets", "csv:x.csv").description.startswith("Images listed in a CSV")


# ---------------------------------------------------------------- csv:PATH


def make_csv_images(root: Path) -> None:
    (root / "img").mkdir(parents=True)
    for name, value in (("one", 30), ("two", 130), ("ten", 230)):
        Image.new("L", (16, 16), value).save(root / "img" / f"{name}.png")
    (root / "img" / "bad.png").write_bytes(b"not a png")


def test_csv_reads_rows_with_header_numeric_labels_and_skips_missing(tmp_path):
    make_csv_images(tmp_path)
    absolute = tmp_path / "img" / "ten.png"
    listing = tmp_path / "lists" / "train.csv"
    listing.parent.mkdir()
    listing.write_text("path,label\n../img/two.png,2\n\n../img/one.png,1\n"
                       f"{absolute},10\n../img/gone.png,1\n../img/bad.png,2\n")
    with pytest.warns(UserWarning) as record:
        ds = csv_list(str(listing))
    assert [str(w.message) for w in record] == ds.notes
    assert ds.class_names == ["1", "2", "10"]  # numeric order, not "10" < "2"
    assert ds.labels.tolist() == [1, 0, 2]  # row order
    assert ds.images.shape == (3, 1, 32, 32)
    assert ds.images[:][0].mean() == pytest.approx(130 / 255, abs=0.01)
    assert ds.images[:][2].mean() == pytest.approx(230 / 255, abs=0.01)
    assert ds.domain == "train"
    missing, unreadable = ds.notes
    assert "skipped 1 of 5 rows whose file does not exist (row 6: '../img/gone.png')" in missing
    assert "skipped 1 of 4 files" in unreadable and "row 7 ('../img/bad.png')" in unreadable


def test_csv_without_header_and_with_text_labels(tmp_path):
    make_csv_images(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("img/ten.png,zebra\nimg/one.png,ant\n")
    ds = csv_list(str(listing), domain="zoo", description="animal")
    assert ds.class_names == ["ant", "zebra"] and ds.labels.tolist() == [1, 0]
    assert (ds.domain, ds.description, ds.notes) == ("zoo", "animal", [])


@pytest.mark.parametrize("text, message", [
    ("path,label\nimg/one.png,a\nimg/two.png,b,extra\n", r"row 3 has 3 fields; every row must be path,label"),
    ("img/one.png\nimg/two.png,b\n", r"row 1 has 1 field; every row must be path,label"),
    ("img/one.png,a\nimg/two.png,\n", r"row 2 has an empty label"),
    ("img/one.png,a\n,b\n", r"row 2 has an empty path"),
    ('img/one.png,a\n"img/two.png,b\n', r"row 2 has 1 field|row \d+ is not valid CSV"),
    ("path,label\n", r"the file has no path,label rows"),
    ("img/one.png,a\nimg/two.png,a\n", r"every row has label 'a'; transfer needs at least two classes"),
    ("img/one.png,a\nimg/gone.png,b\n", r"none of the files of class 'b' exist \(rows 2\)"),
])
def test_csv_malformed_rows_name_the_row(tmp_path, text, message):
    make_csv_images(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text(text)
    with pytest.raises(UserError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csv_list(str(listing))


def test_csv_strict_names_row_and_path_and_file_errors(tmp_path):
    make_csv_images(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("img/one.png,a\nimg/two.png,b\nimg/nope.png,b\n")
    with pytest.raises(UserError, match=r"row 3 names 'img/nope\.png', which does not exist"):
        csv_list(str(listing), strict=True)
    listing.write_text("img/one.png,a\nimg/bad.png,b\nimg/two.png,b\n")
    with pytest.raises(UserError, match=r"cannot read image row 2 \('img/bad\.png'\)"):
        csv_list(str(listing), strict=True)
    with pytest.raises(UserError, match=r"no such file"):
        csv_list(str(tmp_path / "absent.csv"))
    with pytest.raises(UserError, match=r"this is a folder, not a CSV file"):
        csv_list(str(tmp_path / "img"))
    (tmp_path / "latin1.csv").write_bytes("img/one.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"not UTF-8 text"):
        csv_list(str(tmp_path / "latin1.csv"))
