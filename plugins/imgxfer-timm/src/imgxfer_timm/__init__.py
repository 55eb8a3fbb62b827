"""imgxfer-timm: every timm backbone as an imgxfer encoder, named ``timm/<model_name>``.

imgxfer finds this module through the entry point ``timm = "imgxfer_timm"`` in group
``imgxfer`` and calls its ``register_encoders`` hook, exactly as for any third-party plugin.
"""

from __future__ import annotations

from importlib import metadata

import imgxfer
from imgxfer import Register
from imgxfer_timm.encoder import TimmEncoder, make_timm_encoder

# Written once, in pyproject.toml (the plugin is always installed: imgxfer finds it by its
# entry point).
__version__ = metadata.version("imgxfer-timm")
__all__ = ["TimmEncoder", "make_timm_encoder", "register_encoders", "__version__"]


@imgxfer.hookimpl
def register_encoders(register: Register) -> None:
    # A family name: the registry hands everything after "timm/" to the factory.
    register("timm/", make_timm_encoder,
             description="Any timm backbone as a feature encoder (timm/<model_name>)")
