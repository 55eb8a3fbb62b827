"""imgxfer: image transfer learning with generative data augmentation.

The public entry points are :func:`imgxfer.pipeline.run` (the whole chain),
:func:`imgxfer.plugins.get_registry` (components by kind) and ``hookimpl`` for plugins.
"""

from imgxfer.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
