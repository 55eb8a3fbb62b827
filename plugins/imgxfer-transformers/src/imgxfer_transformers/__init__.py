"""imgxfer-transformers: Hugging Face transformers models from local folders.

- ``hf:PATH`` captioner: an image-to-text model (BLIP, GIT...) with its processor
  (:class:`~imgxfer_transformers.captioner.HFCaptioner`);
- ``clip:PATH`` encoder: CLIP's image tower, normalised image embeddings
  (:func:`~imgxfer_transformers.clip.make_clip_encoder`);
- ``clip:PATH`` adapter: CLIP zero-shot, Tip-Adapter and Tip-Adapter-F, which also
  scores synthetic images for ``--synthetic-filter-by``
  (:class:`~imgxfer_transformers.adapter.ClipAdapter`).

Everything is read with ``local_files_only=True``: nothing is downloaded. imgxfer finds
this module through the entry point ``transformers = "imgxfer_transformers"`` in group
``imgxfer``. Importing it does not import transformers (seconds to import); building a
component does.
"""

from __future__ import annotations

from importlib import metadata

import imgxfer
from imgxfer import Register

# Written once, in pyproject.toml (the plugin is always installed: imgxfer finds it by its
# entry point).
__version__ = metadata.version("imgxfer-transformers")
__all__ = ["register_captioners", "register_encoders", "register_adapters", "__version__"]


@imgxfer.hookimpl
def register_captioners(register: Register) -> None:
    from imgxfer_transformers.captioner import HFCaptioner

    # A family: the registry hands everything after "hf:" (the folder) to the factory.
    register("hf:", HFCaptioner,
             description="Hugging Face image-to-text model (BLIP, GIT...) from a local "
                         "folder (hf:PATH)")


@imgxfer.hookimpl
def register_encoders(register: Register) -> None:
    from imgxfer_transformers.clip import make_clip_encoder

    register("clip:", make_clip_encoder,
             description="CLIP's image tower from a local folder (clip:PATH), normalised "
                         "image embeddings")


@imgxfer.hookimpl
def register_adapters(register: Register) -> None:
    from imgxfer_transformers.adapter import ClipAdapter

    register("clip:", ClipAdapter,
             description="CLIP zero-shot / Tip-Adapter / Tip-Adapter-F from a local folder "
                         "(clip:PATH; needs --encoder clip:PATH)")
