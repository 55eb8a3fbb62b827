"""The stages of a run, in the order ``tasks.classify.run.run_stages`` calls them (docs/
architecture.md, "The chain"):

- ``data``: source and target datasets, the few-shot split;
- ``encode``: the encoder trained on the source (when it pretrains);
- ``caption``: captions of the labelled images (they condition the generator);
- ``generate``: fit the generator, synthesise, filter, measure the images;
- ``adapt``: every adapter from the same encoder, with and without the synthetic images.

Each takes the run's :class:`~imgxfer.tasks.classify.plan.Plan` (``data`` runs inside
``plan.prepare``, from the config and the registry) and returns what the next needs:
``generate`` and ``adapt`` small dataclasses, ``encode`` and ``caption`` their metrics
section and captions. None writes the run folder except through
:mod:`imgxfer.run.artifacts`.
"""
