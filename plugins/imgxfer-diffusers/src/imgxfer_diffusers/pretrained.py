"""The ``diffusers:PATH`` generators: a pretrained text-to-image pipeline read from a local
folder (a Stable Diffusion pipeline saved with ``save_pretrained``), used without
training.

- The folder is checked up front: it must hold ``model_index.json`` and the ``unet``,
  ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler`` components (each listed in
  ``model_index.json`` and present as a sub-folder, with readable safetensors weights);
  a folder with its own code (Python files, ``auto_map``, a part from another library)
  or only pickled weights is refused: neither is ever loaded. Anything else is one
  :class:`~imgxfer.core.errors.UserError` sentence naming the folder and what is wrong.
- It is loaded with :class:`diffusers.StableDiffusionPipeline` and
  ``local_files_only=True``: nothing is downloaded, ever. The pipeline is loaded on the
  first ``sample`` (or :meth:`PretrainedPipeline.pipeline`), so building the generator is
  cheap; :meth:`PretrainedPipeline.img2img_pipeline` makes a
  :class:`diffusers.StableDiffusionImg2ImgPipeline` from the same components (no second
  copy of the weights) for an image-to-image mode.
- ``fit`` trains nothing (``trains_by_steps = False``): it remembers the size and channel
  count of the run's images and its classes. ``sample`` draws one image per prompt (the
  run's captioner writes the prompts; labels are only checked) and resizes it to the
  run's images (grayscale by averaging the channels when they have one channel).
- ``state_dict`` is just ``meta.*``: the output shape and classes (the weights stay in
  the folder, whose path is part of the generator's name, ``diffusers:PATH``).

diffusers and transformers are imported only when a generator is built.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from imgxfer import Budget, FitResult, GeneratorData, Progress, UserError, check_model_folder

__all__ = ["PretrainedPipeline", "REQUIRED_COMPONENTS", "DTYPES", "check_pipeline_folder"]

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_STATE_VERSION = 1
# Where a pipeline's parts may come from (anything else is the folder's own code).
_LIBRARIES = frozenset({"diffusers", "transformers"})
# Prompts per pipeline call.
_BATCH = 8


def check_pipeline_folder(path: str | Path) -> Path:
    """``path`` as an absolute folder that holds a text-to-image pipeline's parts, or a
    :class:`UserError` naming the folder and what is missing."""
    folder = Path(path).expanduser()
    where = f"diffusers: {str(path)!r}"
    if not folder.exists():
        raise UserError(f"{where} does not exist; give the folder of a pipeline saved with "
                        "save_pretrained.")
    if not folder.is_dir():
        raise UserError(f"{where} is a file; give the folder of a pipeline saved with "
                        "save_pretrained.")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(f"{where} is not a diffusers pipeline folder: it has no "
                        "model_index.json.")
    try:
        spec = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{where}: its model_index.json cannot be read ({error}).") from None
    if not isinstance(spec, dict):
        raise UserError(f"{where}: its model_index.json is not a JSON object.")
    missing = []
    for name in REQUIRED_COMPONENTS:
        entry = spec.get(name)
        listed = isinstance(entry, list) and len(entry) == 2 and entry[1] is not None
        if not listed:
            missing.append(f"{name} (not in model_index.json)")
        elif not (folder / name).is_dir():
            missing.append(f"{name} (no {name}/ folder)")
    if missing:
        raise UserError(f"{where} is not a complete text-to-image pipeline: it lacks "
                        f"{', '.join(missing)}.")
    _check_libraries(spec, where)
    check_model_folder(folder.resolve(), where)
    _check_weights(folder, where)
    return folder.resolve()


def _check_libraries(spec: dict[str, Any], where: str) -> None:
    """Every listed part must come from diffusers or transformers: any other library name
    is a module diffusers would import from the folder (custom code, never run here)."""
    for name, entry in spec.items():
        if (not name.startswith("_") and isinstance(entry, list) and len(entry) == 2
                and entry[0] is not None and entry[0] not in _LIBRARIES):
            raise UserError(f"{where}: its part {name!r} comes from {entry[0]!r}, custom code "
                            "that imgxfer never runs; only diffusers and transformers parts "
                            "are loaded.")


def _check_weights(folder: Path, where: str) -> None:
    """Each part's safetensors file must open (its header read, no tensor loaded), so a
    damaged folder is refused when the generator is built, before the run folder exists."""
    from safetensors import SafetensorError, safe_open

    for name in ("unet", "vae", "text_encoder"):
        files = sorted((folder / name).glob("*.safetensors"))
        if not files:
            raise UserError(f"{where}: its {name}/ folder has no .safetensors weights (only "
                            "safetensors are loaded).")
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            except (SafetensorError, OSError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise UserError(f"{where}: {name}/{path.name} is not a readable safetensors "
                                f"file ({first or type(error).__name__}).") from None


class PretrainedPipeline:
    """A pretrained Stable Diffusion pipeline from a local folder, as a generator.

    Options: ``steps`` denoising steps (``num_inference_steps``); ``guidance_scale``
    classifier-free guidance; ``dtype`` ``float32`` (default) or ``float16`` /
    ``bfloat16`` (CUDA only); ``image_size`` side of the images the pipeline draws
    (``None``: the pipeline's own, its UNet's sample size times the VAE's scale; a
    multiple of 8), resized afterwards to the run's images. The seed is ``sample``'s.
    """

    conditioning = frozenset({"text"})
    trains_by_steps = False
    resumable = False

    def __init__(self, path: str, *, steps: int = 25, guidance_scale: float = 7.5,
                 dtype: str = "float32", image_size: int | None = None) -> None:
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise UserError(f"diffusers: steps must be a positive integer, got {steps!r}.")
        if not guidance_scale >= 0:
            raise UserError(f"diffusers: guidance_scale must be zero or more, "
                            f"got {guidance_scale!r}.")
        if dtype not in DTYPES:
            raise UserError(f"diffusers: dtype must be one of {', '.join(DTYPES)}, "
                            f"got {dtype!r}.")
        if dtype != "float32" and not torch.cuda.is_available():
            raise UserError(f"diffusers: dtype {dtype} needs a CUDA device and there is none "
                            "here; use dtype=float32.")
        if image_size is not None and (isinstance(image_size, bool)
                                       or int(image_size) != image_size
                                       or image_size < 8 or image_size % 8):
            raise UserError(f"diffusers: image_size must be a multiple of 8 (8 or more), "
                            f"got {image_size!r}.")
        self.path = check_pipeline_folder(path)
        try:
            import diffusers  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as error:
            raise UserError(f"diffusers: a Stable Diffusion pipeline needs diffusers and "
                            f"transformers ({error}); pip install 'imgxfer-diffusers[sd]'."
                            ) from None
        self.steps, self.guidance_scale = int(steps), float(guidance_scale)
        self.dtype, self.image_size = dtype, None if image_size is None else int(image_size)
        self._pipe: Any = None
        self._output_shape: tuple[int, int, int] | None = None
        self._num_classes: int | None = None

    def resolved_options(self) -> dict[str, Any]:
        """Every option with its value (the folder is in the generator's name)."""
        return {"steps": self.steps, "guidance_scale": self.guidance_scale,
                "dtype": self.dtype, "image_size": self.image_size}

    @property
    def num_classes(self) -> int | None:
        """The run's classes, once ``fit`` or ``load_state_dict`` has told them."""
        return self._num_classes

    # -- the diffusers pipelines --------------------------------------------------------

    def pipeline(self) -> Any:
        """The :class:`diffusers.StableDiffusionPipeline`, loaded once from the folder."""
        if self._pipe is None:
            from diffusers import StableDiffusionPipeline

            # Without accelerate, diffusers warns and loads the plain way: ask for that.
            plain = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
            if self.dtype != "float32":
                # Read in that precision (diffusers keeps the parts that need float32 so).
                plain["torch_dtype"] = DTYPES[self.dtype]
            try:
                with warnings.catch_warnings():
                    # Newer diffusers call it ``dtype``; ``torch_dtype`` works in all.
                    warnings.filterwarnings("ignore", ".*dtype.*", FutureWarning)
                    pipe = StableDiffusionPipeline.from_pretrained(
                        str(self.path), local_files_only=True, use_safetensors=True,
                        trust_remote_code=False, **plain)
            except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise UserError(f"diffusers: {str(self.path)!r} cannot be loaded as a Stable "
                                f"Diffusion pipeline ({first or type(error).__name__})."
                                ) from None
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        return self._pipe

    def img2img_pipeline(self) -> Any:
        """A :class:`diffusers.StableDiffusionImg2ImgPipeline` sharing the text-to-image
        pipeline's components (for an image-to-image synthesis mode)."""
        from diffusers import StableDiffusionImg2ImgPipeline

        pipe = StableDiffusionImg2ImgPipeline(**self.pipeline().components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- the generator protocol ---------------------------------------------------------

    def fit(self, data: GeneratorData, *, budget: Budget, progress: Progress,
            device: torch.device | str = "cpu") -> FitResult:
        """Nothing to train: remember the run's image shape and classes."""
        self._output_shape = tuple(int(v) for v in data.images.shape[1:])  # type: ignore[assignment]
        self._num_classes = len(data.class_names)
        progress.log(f"diffusers: the pretrained pipeline {str(self.path)!r} is used as it "
                     "is (it does not train)")
        return FitResult(0)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], labels: Sequence[int] | torch.Tensor, *,
               seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
        """One image per prompt, ``[N, C, H, W]`` in [0, 1] on the CPU, at the run's image
        size and channels (the pipeline's own size and RGB before ``fit``)."""
        device = torch.device(device)
        prompts = [str(p) for p in prompts]
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if len(labels) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
        k = self._num_classes
        if k is not None and len(labels) and not (0 <= int(labels.min())
                                                  and int(labels.max()) < k):
            raise ValueError(f"labels must be class indices in [0, {k})")
        if self.dtype != "float32" and device.type != "cuda":
            raise UserError(f"diffusers: dtype {self.dtype} needs a CUDA device (this run "
                            f"uses {device.type}); use dtype=float32.")
        pipe = self.pipeline().to(device)
        size = self.image_size or (pipe.unet.config.sample_size * pipe.vae_scale_factor)
        # One generator for the whole call, on the CPU: the same seed gives the same images
        # whatever the device.
        generator = torch.Generator().manual_seed(seed)
        shape = self._output_shape or (3, size, size)
        out = [torch.empty(0, *shape)]
        for start in range(0, len(prompts), _BATCH):
            images = pipe(prompts[start:start + _BATCH], height=size, width=size,
                          num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                          generator=generator, output_type="pt").images
            out.append(self._to_run_shape(images.float().cpu(), shape))
        return torch.cat(out)

    @staticmethod
    def _to_run_shape(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        channels, height, width = shape
        if images.shape[-2:] != (height, width):
            images = F.interpolate(images, size=(height, width), mode="bilinear",
                                   antialias=True, align_corners=False)
        if channels == 1:
            images = images.mean(dim=1, keepdim=True)
        elif channels != images.shape[1]:
            images = images.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
        return images.clamp(0, 1).contiguous()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """No weights (they stay in the folder): the output shape and classes only."""
        state: dict[str, torch.Tensor] = {"meta.version": torch.tensor([_STATE_VERSION])}
        if self._output_shape is not None:
            state["meta.image_shape"] = torch.tensor(self._output_shape)
        if self._num_classes is not None:
            state["meta.num_classes"] = torch.tensor([self._num_classes])
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` saved (``{}`` is accepted: nothing to restore)."""
        if "meta.version" in state and int(state["meta.version"][0]) != _STATE_VERSION:
            raise UserError(f"this diffusers generator file has format version "
                            f"{int(state['meta.version'][0])}; this plugin reads version "
                            f"{_STATE_VERSION}.")
        unknown = sorted(k for k in state if not k.startswith("meta."))
        if unknown:
            raise UserError(f"this file was not saved by a diffusers: generator (it holds "
                            f"weights such as {unknown[0]!r}).")
        if "meta.image_shape" in state:
            self._output_shape = tuple(int(v) for v in state["meta.image_shape"])  # type: ignore[assignment]
        if "meta.num_classes" in state:
            self._num_classes = int(state["meta.num_classes"][0])
