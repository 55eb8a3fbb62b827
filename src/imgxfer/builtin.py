"""The built-in plugin: registers imgxfer's own components through the public hooks,
exactly as a third-party plugin would."""

from __future__ import annotations

from imgxfer.hookspecs import Register, hookimpl


@hookimpl
def register_datasets(register: Register) -> None:
    from imgxfer.datasets import digits

    register("syndigits", digits.syndigits)
    register("digits", digits.digits)


@hookimpl
def register_encoders(register: Register) -> None:
    from imgxfer.encoders.smallcnn import SmallCNN

    register("smallcnn", SmallCNN)


@hookimpl
def register_captioners(register: Register) -> None:
    from imgxfer.captioners.template import TemplateCaptioner

    register("template", TemplateCaptioner)


@hookimpl
def register_generators(register: Register) -> None:
    from imgxfer.generators.gan import ConditionalGAN

    register("gan", ConditionalGAN)


@hookimpl
def register_adapters(register: Register) -> None:
    from imgxfer.adapters.finetune import FineTune

    register("finetune", FineTune)
