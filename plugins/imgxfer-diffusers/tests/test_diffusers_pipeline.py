"""Tests of the ``diffusers:PATH`` generators of imgxfer-diffusers: a tiny Stable Diffusion
pipeline is built from configs (as diffusers' own pipeline tests do, with a CLIP tokenizer
made from a vocabulary written here: the hub is never contacted), saved with
``save_pretrained`` and loaded through the plugin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress
from imgxfer.core.runfolder import atomic_save_tensors, read_tensors
from imgxfer.data.dataset import GeneratorData
from imgxfer.plugin.host import PluginHost
from imgxfer.plugin.registry import Registry
from imgxfer_diffusers import PretrainedPipeline

pytest.importorskip("transformers", reason="diffusers:PATH needs transformers (the sd extra)")

PROMPTS = ["a handwritten digit seven", "a handwritten digit one"]


def write_clip_tokenizer(folder: Path) -> Path:
    """vocab.json and merges.txt of a byte-level BPE without merges: every byte is a
    token, alone or ending a word, so any text tokenises (one token per character)."""
    from tokenizers.pre_tokenizers import ByteLevel

    folder.mkdir(parents=True)
    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) for c in chars})
    vocab.update({c + "</w>": len(vocab) for c in chars})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def save_tiny_stable_diffusion(folder: Path) -> Path:
    """A tiny random Stable Diffusion pipeline (64x64 images) saved to ``folder``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
        vae = AutoencoderKL(
            block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"])
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32,
            intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
            num_hidden_layers=5, vocab_size=1000, max_position_embeddings=77))
    tokenizer = CLIPTokenizer.from_pretrained(
        str(write_clip_tokenizer(folder.parent / "clip-vocab")), model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return PluginHost(env={"IMGXFER_LOAD_PLUGINS": "diffusers"}).load_all().registry


def gray_data(size: int = 20) -> GeneratorData:
    images = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(0))
    return GeneratorData(images=images, labels=torch.tensor([0, 1, 0, 1]),
                         captions=["a"] * 4, domains=["t"] * 4, class_names=["one", "seven"],
                         target_domain="t")


def build(registry: Registry, folder: Path | str, **options: Any) -> Any:
    return registry.build("generators", f"diffusers:{folder}", options)


def test_text_to_image_through_the_registry(registry: Registry, sd_folder: Path,
                                            tmp_path: Path) -> None:
    component = registry.get("generators", f"diffusers:{sd_folder}")
    assert component.options() == ["steps", "guidance_scale", "dtype", "image_size"]
    gen = build(registry, sd_folder, steps=2)
    assert isinstance(gen, PretrainedPipeline) and gen.path == sd_folder.resolve()
    assert gen.trains_by_steps is False and gen.conditioning == {"text"}
    assert gen.resolved_options() == {"steps": 2, "guidance_scale": 7.5, "dtype": "float32",
                                      "image_size": None}
    # Before fit: the pipeline's own size (UNet 32 x VAE scale 2) and RGB.
    rgb = gen.sample(PROMPTS, [1, 0], seed=0, device=torch.device("cpu"))
    assert rgb.shape == (2, 3, 64, 64) and 0 <= rgb.min() and rgb.max() <= 1
    assert gen.fit(gray_data(), budget=Budget(0), progress=NullProgress()).steps == 0
    assert gen.num_classes == 2
    images = gen.sample(PROMPTS, [1, 0], seed=0, device="cpu")
    # Resized to the run's images and averaged to their one channel.
    assert images.shape == (2, 1, 20, 20) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
    assert torch.equal(images, gen.sample(PROMPTS, [1, 0], seed=0, device="cpu"))
    assert not torch.equal(images, gen.sample(PROMPTS, [1, 0], seed=1, device="cpu"))
    with pytest.raises(ValueError, match="class indices"):
        gen.sample(PROMPTS[:1], [2], seed=0)

    # What generator.safetensors holds: the run's shape and classes, no weights.
    atomic_save_tensors(tmp_path / "generator.safetensors", gen.state_dict())
    state, _ = read_tensors(tmp_path / "generator.safetensors")
    assert set(state) == {"meta.version", "meta.image_shape", "meta.num_classes"}
    loaded = build(registry, sd_folder, **gen.resolved_options())
    loaded.load_state_dict(state)
    assert loaded.num_classes == 2
    assert torch.equal(loaded.sample(PROMPTS, [1, 0], seed=0), images)
    build(registry, sd_folder).load_state_dict({})  # a bare file is accepted


def test_image_size_and_img2img_from_the_same_components(registry: Registry,
                                                          sd_folder: Path) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    gen = build(registry, sd_folder, steps=2, image_size=32, guidance_scale=1.0)
    assert gen.sample(PROMPTS[:1], [0], seed=0).shape == (1, 3, 32, 32)
    img2img = gen.img2img_pipeline()
    assert isinstance(img2img, StableDiffusionImg2ImgPipeline)
    assert img2img.unet is gen.pipeline().unet  # shared, not a second copy


@pytest.mark.parametrize("breakage, message", [
    ("no-index", "is not a diffusers pipeline folder: it has no model_index.json."),
    ("no-unet", "is not a complete text-to-image pipeline: it lacks unet (no unet/ folder)."),
    ("unlisted-tokenizer",
     "is not a complete text-to-image pipeline: it lacks tokenizer (not in model_index.json)."),
    ("missing", "does not exist; give the folder of a pipeline saved with save_pretrained."),
    ("garbage-unet", "unet/diffusion_pytorch_model.safetensors is not a readable safetensors "
                     "file"),
    ("pickled-unet", "unet/diffusion_pytorch_model.bin in"),
    ("custom-code", "holds custom code (unet/my_unet.py), and imgxfer never runs"),
    ("custom-part", "its part 'unet' comes from 'my_unet', custom code that imgxfer never "
                    "runs"),
])
def test_incomplete_folders_are_refused_in_one_sentence(registry: Registry, sd_folder: Path,
                                                         tmp_path: Path, breakage: str,
                                                         message: str) -> None:
    broken = tmp_path / "broken"
    if breakage != "missing":
        shutil.copytree(sd_folder, broken)
    if breakage == "no-index":
        (broken / "model_index.json").unlink()
    elif breakage == "no-unet":
        shutil.rmtree(broken / "unet")
    elif breakage == "unlisted-tokenizer":
        index = json.loads((broken / "model_index.json").read_text())
        del index["tokenizer"]
        (broken / "model_index.json").write_text(json.dumps(index))
    elif breakage == "garbage-unet":
        (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage" * 9)
    elif breakage == "pickled-unet":
        weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
        torch.save({"w": torch.zeros(1)}, weights.with_suffix(".bin"))
        weights.unlink()
    elif breakage == "custom-code":
        (broken / "unet" / "my_unet.py").write_text("raise SystemExit('ran')\n")
    elif breakage == "custom-part":
        index = json.loads((broken / "model_index.json").read_text())
        index["unet"] = ["my_unet", "MyUNet"]
        (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError) as error:
        build(registry, broken)
    text = str(error.value)
    assert text.startswith(f"diffusers: {str(broken)!r}") and len(text.splitlines()) == 1
    assert message in text and text.endswith(".")


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "diffusers: steps must be a positive integer, got 0."),
    ({"dtype": "float64"}, "diffusers: dtype must be one of float32, float16, bfloat16, "
                           "got 'float64'."),
    ({"image_size": 30}, "diffusers: image_size must be a multiple of 8 (8 or more), got 30."),
    ({"guidance_scale": -1.0}, "diffusers: guidance_scale must be zero or more, got -1.0."),
])
def test_invalid_options_are_refused(registry: Registry, sd_folder: Path,
                                     options: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as error:
        build(registry, sd_folder, **options)
    assert str(error.value) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused where there is no CUDA")
def test_half_precision_needs_cuda(registry: Registry, sd_folder: Path) -> None:
    """Refused when the generator is built, before a run trains anything."""
    with pytest.raises(UserError, match="dtype float16 needs a CUDA device"):
        build(registry, sd_folder, dtype="float16", steps=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_precision(registry: Registry, sd_folder: Path) -> None:
    gen = build(registry, sd_folder, dtype="float16", steps=2)
    gen.fit(gray_data(), budget=Budget(0), progress=NullProgress(), device="cuda")
    images = gen.sample(PROMPTS, [1, 0], seed=0, device=torch.device("cuda"))
    assert images.shape == (2, 1, 20, 20) and images.device.type == "cpu"
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_generator_contract(sd_folder: Path) -> None:
    from imgxfer.plugin import testing

    testing.check_generator(PretrainedPipeline, str(sd_folder), steps=2, image_size=32)
