"""The ``hf:PATH`` captioners: a Hugging Face image-to-text model (BLIP, GIT, or another
model of transformers' ``AutoModelForImageTextToText`` that captions from pixels, with an
optional plain-text prompt) read from a local folder with its processor.

- The folder is checked and the model and processor are loaded when the captioner is
  built (``local_files_only=True``: nothing is downloaded), so a wrong folder is one
  sentence before a run writes anything.
- ``caption`` runs the model ``batch_size`` images at a time with greedy (or beam)
  decoding, which is deterministic, on the device given to ``to`` (a run passes its
  own). Images are handed to the processor as 8-bit RGB, as read from files.
- Prompts for a generator (``caption(None, labels)``) have no image to look at: they come
  from imgxfer's template captioner ("a handwritten digit seven, domain digits").
- ``combine=true`` joins the model's text to the template captioner's caption of the
  same image (class or guess, measured attributes, domain): "TEMPLATE; MODEL TEXT".
- An image for which the model writes nothing (special tokens only) gets the template
  captioner's caption alone, so every image has a caption.

transformers is imported only when a captioner is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from imgxfer import DEFAULT_TEMPLATE, TemplateCaptioner, UserError, match_channels
from imgxfer_transformers.folders import check_folder, load_local

__all__ = ["HFCaptioner", "caption_model_class"]

_WHAT = "an image-to-text model (BLIP, GIT...) with its processor"
# transformers' auto classes for image-to-text models, newest first, with the table of
# model types each one reads (AutoModelForVision2Seq is gone from transformers 5).
_AUTO_CLASSES = (("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
                 ("AutoModelForVision2Seq", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"))


def caption_model_class(model_type: str) -> Any:
    """The transformers auto class that loads an image-to-text model of this type, or
    ``None`` when no such class knows the type."""
    import transformers
    from transformers.models.auto import modeling_auto

    for class_name, table in _AUTO_CLASSES:
        if (model_type in getattr(modeling_auto, table, {})
                and hasattr(transformers, class_name)):
            return getattr(transformers, class_name)
    return None


def _positive_int(name: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}: {option} must be a positive integer, got {value!r}.")
    return value


class HFCaptioner:
    """Captions written by a Hugging Face image-to-text model from a local folder.

    Options: ``prompt`` text the caption continues (BLIP's "a photography of"; empty:
    none); ``max_new_tokens`` longest caption in tokens; ``num_beams`` beam search width
    (1: greedy); ``batch_size`` images per model call; ``combine`` prefix each caption with
    the template captioner's (label, measured attributes, domain); ``template`` that
    captioner's template (see ``imgxfer list captioners``).
    """

    def __init__(self, path: str, *, prompt: str = "", max_new_tokens: int = 30,
                 num_beams: int = 1, batch_size: int = 16, combine: bool = False,
                 template: str = DEFAULT_TEMPLATE) -> None:
        name = f"hf:{path}"
        self.max_new_tokens = _positive_int(name, "max_new_tokens", max_new_tokens)
        self.num_beams = _positive_int(name, "num_beams", num_beams)
        self.batch_size = _positive_int(name, "batch_size", batch_size)
        self.prompt, self.combine = str(prompt), bool(combine)
        # Prompts (no images), empty model captions and combine=true use it.
        self.template = TemplateCaptioner(template=template)
        # Declared only when captions carry the measured attributes (imgxfer.plugin.protocols).
        self.attributes: Callable[[torch.Tensor], list[dict[str, Any]]] | None = (
            self.template.attributes if self.combine else None)
        self.path, self.model, self.processor = load_captioning_model(path, name)
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> HFCaptioner:
        """Compute on ``device`` from now on (a run calls it with its device)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def caption(self, images: torch.Tensor | None,
                labels: Sequence[int] | torch.Tensor | None = None, *,
                class_names: Sequence[str], domain: str, description: str = "",
                classifier: Any = None) -> list[str]:
        context = {"class_names": class_names, "domain": domain, "description": description,
                   "classifier": classifier}
        if images is None:
            return self.template.caption(None, labels, **context)
        model_texts = self.model_text(images)
        if labels is not None and len(labels) != len(model_texts):
            raise ValueError(f"{len(model_texts)} images but {len(labels)} labels")
        needs_template = self.combine or not all(model_texts)
        templated = (self.template.caption(images, labels, **context) if needs_template
                     else [""] * len(model_texts))
        return [_join(t, m, self.combine) for t, m in zip(templated, model_texts, strict=True)]

    @torch.inference_mode()
    def model_text(self, images: torch.Tensor) -> list[str]:
        """The model's caption of each image ([N, C, H, W] in [0, 1]), whitespace tidied
        ("" where it wrote nothing)."""
        texts: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = _rgb_bytes(images[start:start + self.batch_size])
            inputs: dict[str, Any] = {"images": batch, "return_tensors": "pt"}
            if self.prompt:
                inputs["text"] = [self.prompt] * len(batch)
            encoded = self.processor(**inputs).to(self.device)
            ids = self.model.generate(**encoded, max_new_tokens=self.max_new_tokens,
                                      num_beams=self.num_beams, do_sample=False)
            texts += [" ".join(t.split()) for t in
                      self.processor.batch_decode(ids, skip_special_tokens=True)]
        return texts


def _join(template_caption: str, model_text: str, combine: bool) -> str:
    if not model_text:
        return template_caption
    return f"{template_caption}; {model_text}" if combine else model_text


def _rgb_bytes(images: torch.Tensor) -> list[Any]:
    """Float images [N, C, H, W] in [0, 1] (1, 3 or 4 channels) as 8-bit RGB arrays
    [H, W, 3], what image processors expect from files."""
    rgb = match_channels(images.detach().float().cpu().clamp(0, 1), 3)
    pixels = (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [p.numpy() for p in pixels]


def load_captioning_model(path: str, name: str) -> tuple[Path, Any, Any]:
    """(folder, model in eval mode on the CPU, processor) of an image-to-text model."""
    folder, model_type = check_folder(path, name, _WHAT)
    auto = caption_model_class(model_type)
    if auto is None:
        raise UserError(f"{name}: {str(path)!r} holds a {model_type!r} model, which is not an "
                        "image-to-text model of transformers (BLIP, GIT...).")
    from transformers import AutoProcessor

    processor = load_local(AutoProcessor.from_pretrained, folder, name, "processor")
    if not callable(getattr(processor, "batch_decode", None)):
        raise UserError(f"{name}: {str(path)!r} has an image processor but no tokenizer; a "
                        "captioning model needs both (save its processor with the model).")
    model = load_local(auto.from_pretrained, folder, name, f"{model_type} model",
                       use_safetensors=True)
    return folder, model.eval(), processor
