"""Built-in generators: models that learn labelled, captioned images and synthesise more.

:mod:`imgxfer.generators.gan` holds the conditional GAN registered as ``gan``;
:mod:`imgxfer.generators.text` the download-free text encoder it conditions on captions.
"""
