"""The built-in `template` captioner: captions from label, domain and pixel attributes."""

from __future__ import annotations

import json
import time

import pytest
import torch

from imgxfer.components.captioners.template import DEFAULT_TEMPLATE, TemplateCaptioner, colour_names
from imgxfer.core.errors import UserError

NAMES = ["zero", "one"]


def canvas(n: int = 1, *, background: float | tuple = 0.0,
           channels: int = 1, size: int = 32) -> torch.Tensor:
    colour = torch.tensor(background if isinstance(background, tuple) else (background,) * channels)
    return colour.view(1, channels, 1, 1).expand(n, channels, size, size).clone()


def paint(images: torch.Tensor, i: int, rows: slice, cols: slice, colour) -> None:
    channels = images.shape[1]
    value = torch.tensor(colour if isinstance(colour, tuple) else (colour,) * channels)
    images[i, :, rows, cols] = value.view(channels, 1, 1)


def attrs(images: torch.Tensor) -> list[dict]:
    return TemplateCaptioner().attributes(images)


def captions(images, labels=(0,), **kw):
    return TemplateCaptioner(**kw).caption(images, list(labels), class_names=NAMES,
                                           domain="test", description="drawn digit")


def test_default_caption_format():
    x = canvas()
    paint(x, 0, slice(6, 26), slice(14, 17), 1.0)
    (text,) = captions(x)
    assert text == ("a drawn digit zero, white ink on black, medium strokes, medium, centred, "
                    "high contrast, low brightness, domain test")


def test_captions_are_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g) * 0.3
    x[:, :, 8:24, 10:20] += 0.7 * torch.rand(64, 3, 1, 1, generator=g)
    labels = torch.randint(2, (64,), generator=g)
    first = TemplateCaptioner().caption(x, labels, class_names=NAMES, domain="d")
    again = TemplateCaptioner().caption(x.clone(), labels, class_names=NAMES, domain="d")
    assert first == again == TemplateCaptioner().caption(x, labels, class_names=NAMES, domain="d")
    assert len(set(first)) > 1  # the attributes differ between images
    assert attrs(x) == attrs(x.clone())
    # One image alone gets the same caption as within a batch.
    assert TemplateCaptioner().caption(x[5:6], labels[5:6], class_names=NAMES, domain="d") == [first[5]]


def test_polarity_white_on_black_vs_black_on_white():
    x = torch.cat([canvas(background=0.0), canvas(background=1.0)])
    paint(x, 0, slice(6, 26), slice(14, 18), 1.0)
    paint(x, 1, slice(6, 26), slice(14, 18), 0.0)
    a, b = attrs(x)
    assert (a["ink"], a["background"], a["brightness"]) == ("white", "black", "low")
    assert (b["ink"], b["background"], b["brightness"]) == ("black", "white", "high")
    first, second = captions(x, (0, 0))
    assert "white ink on black" in first and "black ink on white" in second
    # Mid-grey ink on a light background: low contrast. (0.75, not the bucket edge 0.8:
    # whether 0.8 lands below or above it depends on the CPU's float rounding.)
    y = canvas(background=0.75)
    paint(y, 0, slice(6, 26), slice(14, 18), 0.55)
    (c,) = attrs(y)
    assert (c["ink"], c["background"], c["contrast"]) == ("grey", "light grey", "low")


def test_stroke_thickness():
    x = canvas(2)
    paint(x, 0, slice(4, 28), slice(15, 16), 1.0)  # 1 px line
    paint(x, 1, slice(4, 28), slice(11, 21), 1.0)  # 10 px bar
    thin, thick = attrs(x)
    assert thin["stroke"] == "thin" and thick["stroke"] == "thick"
    assert thin["stroke_px"] == pytest.approx(1.0) and thick["stroke_px"] == pytest.approx(10.0)
    # Blurred (anti-aliased) strokes are measured at half height, not at their faint rim.
    kernel = torch.tensor([0.2, 0.6, 0.2])
    blurred = torch.nn.functional.conv2d(x, (kernel[:, None] * kernel[None, :]).view(1, 1, 3, 3),
                                         padding=1)
    assert [a["stroke"] for a in attrs(blurred)] == ["thin", "thick"]


def test_position_and_size():
    x = canvas(5)
    paint(x, 0, slice(12, 20), slice(1, 8), 1.0)    # left, small
    paint(x, 1, slice(12, 20), slice(24, 31), 1.0)  # right, small
    paint(x, 2, slice(1, 7), slice(25, 31), 1.0)    # top-right
    paint(x, 3, slice(2, 30), slice(3, 29), 1.0)    # large, centred
    paint(x, 4, slice(8, 24), slice(10, 22), 1.0)   # medium, centred
    rows = attrs(x)
    assert [r["position"] for r in rows] == ["left", "right", "top-right", "centred", "centred"]
    assert [r["size"] for r in rows] == ["small", "small", "small", "large", "medium"]
    assert rows[0]["centre"][0] < 0.25 < 0.75 < rows[1]["centre"][0]
    # A stray pixel does not stretch the bounding box.
    y = x[4:5].clone()
    y[0, 0, 0, 0] = 1.0
    assert attrs(y)[0]["size"] == "medium" and attrs(y)[0]["position"] == "centred"
    assert "small, top-right" in captions(x[2:3])[0]


def test_rgb_colour_names():
    x = canvas(3, background=(1.0, 1.0, 1.0), channels=3)
    paint(x, 0, slice(6, 26), slice(10, 20), (0.9, 0.1, 0.1))
    paint(x, 1, slice(6, 26), slice(10, 20), (0.1, 0.2, 0.8))
    x[2] = torch.tensor([0.1, 0.5, 0.1]).view(3, 1, 1)  # green page, yellow ink
    paint(x, 2, slice(6, 26), slice(10, 20), (0.95, 0.9, 0.1))
    texts = captions(x, (0, 1, 0))
    assert "red ink on white" in texts[0]
    assert "blue ink on white" in texts[1]
    assert "yellow ink on green" in texts[2]
    palette = torch.tensor([[0, 0, 0], [1, 1, 1], [.5, .5, .5], [1, 0, 0], [0, .8, 0], [0, 0, 1],
                            [1, .55, 0], [.45, .25, .05], [1, 1, 0], [0, 1, 1], [.5, 0, .8],
                            [1, .7, .8]], dtype=torch.float32)
    assert colour_names(palette) == ["black", "white", "grey", "red", "green", "blue", "orange",
                                     "brown", "yellow", "cyan", "purple", "pink"]


def test_blank_image():
    (a,) = attrs(canvas(background=0.5))
    assert a["blank"] and a["ink"] is None and a["stroke"] is None and a["background"] == "grey"
    (text,) = captions(canvas(background=0.5))
    assert text == "a drawn digit zero, blank grey background, medium brightness, domain test"


def test_prompts_without_images_have_no_attributes():
    texts = TemplateCaptioner().caption(None, [0, 1], class_names=NAMES, domain="digits",
                                        description="handwritten digit")
    assert texts == ["a handwritten digit zero, domain digits", "a handwritten digit one, domain digits"]
    for template, expected in [("{attributes}: a {label}", "a zero"),
                               ("a {label} ({attributes}) in {domain}", "a zero in d"),
                               ("{label}; {attributes}", "zero"),
                               ("{label} / {attributes}", "zero")]:
        assert TemplateCaptioner(template).caption(None, [0], class_names=NAMES, domain="d") == [expected]


def test_attributes_option_and_template_without_the_field():
    x = canvas()
    paint(x, 0, slice(6, 26), slice(14, 18), 1.0)
    assert captions(x, attributes=False) == ["a drawn digit zero, domain test"]
    assert captions(x, template="{label} from {domain}") == ["zero from test"]
    assert captions(x, template="{label}: {attributes}")[0].startswith("zero: white ink on black,")


def test_unlabelled_images_use_the_classifier():
    x = canvas(2)
    paint(x, 0, slice(6, 26), slice(14, 18), 1.0)
    calls = []

    def classifier(images):
        calls.append(images.shape)
        return torch.tensor([[0.1, 0.9], [0.75, 0.25]])

    texts = TemplateCaptioner().caption(x, None, class_names=NAMES, domain="d",
                                        classifier=classifier)
    assert calls == [(2, 1, 32, 32)]
    assert texts[0].startswith("a picture of (probably one, p=0.90), white ink on black")
    assert texts[1] == "a picture of (probably zero, p=0.75), blank black background, low brightness, domain d"
    unknown = TemplateCaptioner().caption(x, None, class_names=NAMES, domain="d")
    assert unknown[0].startswith("a picture of unknown class, white ink")


@pytest.mark.parametrize("template, message", [
    ("a {colour} {label}", "unknown field(s) {colour}"),
    ("a {} {label}", "unknown field(s) {}"),
    ("a {label.upper}", "unknown field(s) {label.upper}"),
    ("a {label", "is invalid"),
    ("a {description}, domain {domain}", "has no {label} field"),
])
def test_template_validation(template, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        TemplateCaptioner(template)


def test_built_through_the_registry_with_options(host):
    captioner = host.registry.build("captioners", "template",
                                    {"template": "{label} / {attributes}", "attributes": False})
    assert captioner.caption(canvas(), [1], class_names=NAMES, domain="d") == ["one"]
    with pytest.raises(UserError, match="option attributes must be bool"):
        host.registry.build("captioners", "template", {"attributes": "yes"})
    assert TemplateCaptioner().template == DEFAULT_TEMPLATE


def test_attributes_are_json_numbers_and_words():
    x = canvas(2, channels=3)
    paint(x, 0, slice(6, 26), slice(14, 18), (1.0, 1.0, 1.0))
    rows = attrs(x)
    json.dumps(rows)  # JSON-ready
    first = rows[0]
    assert first["text"] in captions(x, (0, 0))[0]
    assert first["ink_rgb"] == [1.0, 1.0, 1.0] and first["background_rgb"] == [0.0, 0.0, 0.0]
    assert first["ink_fraction"] == pytest.approx(80 / 1024, abs=1e-4)
    assert first["box"] == [14 / 32, 6 / 32, 18 / 32, 26 / 32]
    assert 0 <= first["brightness_value"] <= 1 and first["contrast_value"] == 1.0


def test_bad_shapes_and_fast_batches():
    with pytest.raises(ValueError):
        TemplateCaptioner().caption(torch.zeros(2, 2, 8, 8), [0, 0], class_names=NAMES, domain="d")
    with pytest.raises(ValueError):
        TemplateCaptioner().caption(torch.zeros(2, 1, 8, 8), [0], class_names=NAMES, domain="d")
    assert TemplateCaptioner().caption(torch.zeros(0, 1, 8, 8), [], class_names=NAMES, domain="d") == []
    x = torch.rand(2000, 1, 32, 32)
    start = time.perf_counter()
    texts = TemplateCaptioner().caption(x, torch.zeros(2000, dtype=torch.long), class_names=NAMES,
                                        domain="d")
    assert len(texts) == 2000
    assert time.perf_counter() - start < 3.0  # ~0.1 s on one idle core
