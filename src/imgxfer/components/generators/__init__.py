"""Built-in generators: models that learn labelled, captioned images and synthesise more.

:mod:`imgxfer.components.generators.gan` holds the conditional GAN registered as ``gan``;
:mod:`imgxfer.nn.text` the download-free text encoder it conditions on captions.
"""
