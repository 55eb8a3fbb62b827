"""Tests of the built-in conditional GAN and its hashed text encoder, on tiny images."""

from __future__ import annotations

import inspect
import math
import zlib
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file, save_file

from imgxfer.budget import Budget
from imgxfer.data import GeneratorData
from imgxfer.errors import UserError
from imgxfer.generators.gan import ConditionalGAN, _diff_augment
from imgxfer.generators.text import HashedTextEncoder, bucket, token_ids, tokenize
from imgxfer.progress import NullProgress

# Tiny networks learn the toy data below in a few hundred steps at this large learning rate.
TINY = dict(z_dim=8, width=4, embed_dim=8, image_size=8, batch_size=16, lr=5e-3, seed=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks gain nothing from threads, and on a shared CPU threads can stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(levels: list[float], captions: list[str], labels: list[int], *, size: int = 8,
          copies: int = 12) -> GeneratorData:
    """`copies` flat images per level; those of the last level form the target domain."""
    n = len(levels)
    images = torch.cat([torch.full((copies, 1, size, size), v) for v in levels])
    domains = [("target" if k == n - 1 else "source") for k in range(n) for _ in range(copies)]
    return GeneratorData(
        images=images,
        labels=torch.tensor(labels).repeat_interleave(copies),
        captions=[c for c in captions for _ in range(copies)],
        domains=domains,
        class_names=["zero", "one"],
        target_domain="target",
    )


def _black_white() -> GeneratorData:
    """Class 0 all black, class 1 all white; the captions say nothing about the class."""
    return _data([0.0, 1.0], ["a square", "a square"], [0, 1])


@pytest.fixture(scope="module")
def trained() -> ConditionalGAN:
    gan = ConditionalGAN(**TINY)
    gan.fit(_black_white(), budget=Budget(300), progress=NullProgress(), device=torch.device("cpu"))
    return gan


class _RecordingProgress:
    def __init__(self) -> None:
        self.tasks: list[tuple[str, int | None]] = []
        self.advances: list[dict] = []

    @contextmanager
    def task(self, description: str, total: int | None):
        self.tasks.append((description, total))
        outer = self

        class _Task:
            def advance(self, n: int = 1, **info: float | str) -> None:
                outer.advances.append({"n": n, **info})

        yield _Task()

    def log(self, message: str) -> None:
        pass


# -- text encoder ----------------------------------------------------------------------


def test_tokenize_lowercases_words_and_adds_adjacent_pairs() -> None:
    assert tokenize("A Digit, seven!") == ["a", "digit", "seven", "a digit", "digit seven"]
    assert tokenize("  ") == []


def test_buckets_are_fixed_across_processes() -> None:
    # crc32, not Python's salted hash(): checkpoints must mean the same in every process.
    assert bucket("seven") == 3436
    assert bucket("digit seven") == 1902
    assert bucket("seven", num_buckets=100) == zlib.crc32(b"seven") % 100


def test_text_encoder_pads_rows_and_ignores_padding() -> None:
    ids = token_ids(["seven", "digit seven", ""])
    assert ids.shape == (3, 3)
    assert ids[0].tolist() == [3436, 4096, 4096]
    encoder = HashedTextEncoder(dim=6)
    padded = encoder(ids[:1])
    alone = encoder(torch.tensor([[3436]]))
    assert torch.allclose(padded, alone)
    assert encoder.encode(["seven", "eight"]).shape == (2, 6)


# -- options ---------------------------------------------------------------------------


def test_factory_takes_keyword_options_with_defaults_and_a_description() -> None:
    parameters = inspect.signature(ConditionalGAN).parameters.values()
    assert {"z_dim", "width", "lr", "batch_size", "image_size", "ema", "target_weight",
            "seed"} <= {p.name for p in parameters}
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in parameters)
    assert ConditionalGAN.__doc__.strip().splitlines()[0].startswith("Class- and caption-")
    assert ConditionalGAN.conditioning == {"label", "text"}


@pytest.mark.parametrize("options, words", [
    (dict(image_size=30), "power of two"),
    (dict(augment="color,blur"), "unknown augment blur"),
    (dict(target_weight=1.5), "target_weight"),
    (dict(width=0), "width"),
])
def test_invalid_options_are_user_errors(options: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        ConditionalGAN(**options)


def test_target_images_get_target_weight_of_each_draw() -> None:
    gan = ConditionalGAN(target_weight=0.4)
    weights = gan._draw_weights(["s"] * 90 + ["t"] * 10, "t")
    assert math.isclose(float(weights[90:].sum() / weights.sum()), 0.4, rel_tol=1e-6)


def test_augmentations_move_and_cut_images_and_pass_gradients() -> None:
    rng = torch.Generator().manual_seed(0)
    dot = torch.full((32, 1, 16, 16), -1.0)
    dot[:, :, 8, 8] = 1.0
    moved = _diff_augment(dot, ("translation",), rng)
    where = (moved == 1).flatten(1).float().argmax(dim=1)
    dy, dx = where // 16 - 8, where % 16 - 8
    assert (moved == 1).flatten(1).sum(1).eq(1).all()  # shifted, not blurred
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and (dy != 0).any() and (dx != 0).any()

    cut = _diff_augment(torch.ones(32, 1, 16, 16), ("cutout",), rng)
    zeros = (cut == 0).flatten(1).sum(1)
    assert zeros.min() >= 16 and zeros.max() <= 64 and (zeros == 64).any()

    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    _diff_augment(x, ("color", "translation", "cutout"), rng).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(_diff_augment(x, (), rng), x)


# -- training and sampling -------------------------------------------------------------


def test_fit_reports_progress_and_returns_one_finite_loss_per_step() -> None:
    gan = ConditionalGAN(**TINY)
    progress = _RecordingProgress()
    history = gan.fit(_black_white(), budget=Budget(7), progress=progress, device="cpu")
    assert progress.tasks == [("generator: gan", 7)]
    assert len(progress.advances) == 7 and {"d_loss", "g_loss"} <= set(progress.advances[-1])
    assert set(history) == {"d_loss", "g_loss"}
    assert all(len(v) == 7 and all(math.isfinite(x) for x in v) for v in history.values())
    assert gan.history == history


def test_same_seed_gives_the_same_training_on_cpu() -> None:
    runs = [ConditionalGAN(**TINY).fit(_black_white(), budget=Budget(5), progress=NullProgress(),
                                       device="cpu") for _ in range(2)]
    assert runs[0] == runs[1]


def test_inputs_of_another_size_are_resized() -> None:
    data = _data([0.0, 1.0], ["a", "b"], [0, 1], size=12)
    gan = ConditionalGAN(**TINY)
    gan.fit(data, budget=Budget(2), progress=NullProgress(), device="cpu")
    assert gan.sample(["a"], [0]).shape == (1, 1, 8, 8)


def test_sample_before_fit_is_an_internal_error() -> None:
    with pytest.raises(RuntimeError, match="not trained"):
        ConditionalGAN(**TINY).sample(["a square"], [0])


def test_sample_shape_range_and_seed(trained: ConditionalGAN) -> None:
    images = trained.sample(["a square", "a square"], torch.tensor([0, 1]), n=3, seed=5)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.float32
    assert images.device.type == "cpu"
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert torch.equal(images, trained.sample(["a square"] * 2, [0, 1], n=3, seed=5))
    assert not torch.equal(images, trained.sample(["a square"] * 2, [0, 1], n=3, seed=6))
    with pytest.raises(ValueError):
        trained.sample(["a square"], [0, 1])
    with pytest.raises(ValueError):
        trained.sample(["a square"], [2])


def test_class_label_steers_the_samples(trained: ConditionalGAN) -> None:
    images = trained.sample(["a square"] * 2, [0, 1], n=16, seed=0)
    black, white = float(images[:16].mean()), float(images[16:].mean())
    # Over ten training seeds the smallest gap measured was 0.68; unconditioned it is 0.
    assert white - black > 0.5, (black, white)


def test_caption_text_steers_the_samples() -> None:
    # One class; only the caption tells the dark domain from the bright one.
    data = _data([0.0, 1.0], ["a dark square", "a bright square"], [0, 0])
    gan = ConditionalGAN(**TINY)
    gan.fit(data, budget=Budget(300), progress=NullProgress(), device="cpu")
    images = gan.sample(["a dark square", "a bright square"], [0, 0], n=16, seed=0)
    dark, bright = float(images[:16].mean()), float(images[16:].mean())
    assert bright - dark > 0.5, (dark, bright)


# -- checkpoints -----------------------------------------------------------------------


def test_state_dict_round_trips_through_safetensors(trained: ConditionalGAN, tmp_path) -> None:
    state = trained.state_dict()
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" and v.is_contiguous()
               for v in state.values())
    assert state["meta.image_shape"].tolist() == [1, 8, 8]
    save_file(state, tmp_path / "gan.safetensors")
    fresh = ConditionalGAN(**TINY)
    fresh.load_state_dict(load_file(tmp_path / "gan.safetensors"))
    prompts, labels = ["a square", "a square", "a circle"], [0, 1, 1]
    assert torch.equal(fresh.sample(prompts, labels, seed=2),
                       trained.sample(prompts, labels, seed=2))


def test_state_dict_of_another_configuration_is_a_user_error(trained: ConditionalGAN) -> None:
    with pytest.raises(UserError, match=r"width=4 \(not 8\)"):
        ConditionalGAN(**{**TINY, "width": 8}).load_state_dict(trained.state_dict())
    with pytest.raises(UserError, match="z_dim=8"):
        ConditionalGAN(**{**TINY, "z_dim": 16}).load_state_dict(trained.state_dict())
    with pytest.raises(UserError, match="not saved by the gan"):
        ConditionalGAN(**TINY).load_state_dict({"weight": torch.zeros(2)})


def test_truncated_state_dict_is_a_user_error(trained: ConditionalGAN) -> None:
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("ema.stem")}
    with pytest.raises(UserError, match="does not fit"):
        ConditionalGAN(**TINY).load_state_dict(state)
