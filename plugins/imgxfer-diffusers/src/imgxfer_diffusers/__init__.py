"""imgxfer-diffusers: diffusion generators built from Hugging Face diffusers.

- ``diffusion``: a small class-, domain- and caption-conditioned diffusion model trained
  from scratch in the run (:class:`~imgxfer_diffusers.diffusion.DiffusionGenerator`);
- ``diffusers:PATH``: a pretrained Stable Diffusion pipeline read from a local folder,
  used without training (:class:`~imgxfer_diffusers.pretrained.PretrainedPipeline`).

imgxfer finds this module through the entry point ``diffusers = "imgxfer_diffusers"`` in
group ``imgxfer`` and calls its ``register_generators`` hook. Importing it does not import
diffusers or transformers (they take seconds to import); building a generator does.
"""

from __future__ import annotations

from importlib import metadata

import imgxfer
from imgxfer import Register
from imgxfer_diffusers.diffusion import DiffusionGenerator
from imgxfer_diffusers.pretrained import PretrainedPipeline

# Written once, in pyproject.toml (the plugin is always installed: imgxfer finds it by its
# entry point).
__version__ = metadata.version("imgxfer-diffusers")
__all__ = ["DiffusionGenerator", "PretrainedPipeline", "register_generators", "__version__"]


@imgxfer.hookimpl
def register_generators(register: Register) -> None:
    register("diffusion", DiffusionGenerator,
             description="Diffusion model (diffusers UNet2DModel) trained in the run, "
                         "conditioned on class, domain and caption")
    # A family: the registry hands everything after "diffusers:" (the folder) to it.
    register("diffusers:", PretrainedPipeline,
             description="Pretrained Stable Diffusion pipeline from a local folder "
                         "(diffusers:PATH), used without training")
