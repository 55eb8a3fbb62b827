"""imgxfer: image transfer learning with generative data augmentation.

The public entry points are :func:`imgxfer.pipeline.run` (the whole chain),
:func:`imgxfer.plugins.get_registry` (components by kind) and, for plugin authors,
``hookimpl``, the component protocols of :mod:`imgxfer.protocols` with what their methods
receive and return (``Budget``, ``Progress``, ``FitResult``, ``Classifier``) and the
contract checks of :mod:`imgxfer.testing`.
"""

from typing import Any

from imgxfer.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__", "Budget", "Progress", "NullProgress", "FitResult",
           "Classifier", "ImageDataset", "GeneratorData", "TransferData"]

# Where each public name lives; imported on first use, so `import imgxfer` (every plugin
# does it) stays free of torch until a component needs it.
_LAZY = {"Budget": "imgxfer.budget", "Progress": "imgxfer.progress",
         "NullProgress": "imgxfer.progress", "FitResult": "imgxfer.protocols",
         "Classifier": "imgxfer.classifier", "ImageDataset": "imgxfer.data",
         "GeneratorData": "imgxfer.data", "TransferData": "imgxfer.data"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imgxfer' has no attribute {name!r}")
