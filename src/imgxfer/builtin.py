"""The built-in plugin: registers imgxfer's own components through the public hooks,
exactly as a third-party plugin would."""

from __future__ import annotations

from typing import Any

from imgxfer.hookspecs import Register, hookimpl


@hookimpl
def register_datasets(register: Register) -> None:
    from imgxfer.datasets import (csvlist, digits, fashion, folder, mnist, mnistm, scenes,
                                  tvdatasets)

    register("syndigits", digits.syndigits)
    register("digits", digits.digits)
    register("mnist", mnist.mnist)
    register("mnist-m", mnistm.mnist_m)
    register("fashion-mnist", fashion.fashion_mnist)
    # Families: the part after the prefix is the factory's first argument.
    register("folder:", folder.folder)
    register("csv:", csvlist.csv_list)
    register("torchvision:", tvdatasets.torchvision_dataset)
    # Scene datasets (masks and/or boxes) for --task segment and --task detect.
    register("digit-scenes:", scenes.digit_scenes)
    register("masks:", scenes.masks_dataset)
    register("coco:", scenes.coco_dataset)


@hookimpl
def register_encoders(register: Register) -> None:
    from imgxfer.encoders import torchvision_backbones as tvb
    from imgxfer.encoders.smallcnn import SmallCNN

    register("smallcnn", SmallCNN)
    for name, backbone in tvb.BACKBONES.items():
        register(name, tvb.factory(name), description=backbone.description)


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
    from imgxfer.adapters.adversarial import CDAN, DANN
    from imgxfer.adapters.baselines import SourceOnly, TargetOnly
    from imgxfer.adapters.discrepancy import MMD, DeepCORAL
    from imgxfer.adapters.finetune import FineTune
    from imgxfer.adapters.linear import LinearProbe, LinearProbeFineTune
    from imgxfer.adapters.selftraining import SelfTraining

    register("finetune", FineTune)
    register("source-only", SourceOnly)
    register("target-only", TargetOnly)
    register("linear", LinearProbe)
    register("lp-ft", LinearProbeFineTune)
    register("dann", DANN)
    register("cdan", CDAN)
    register("coral", DeepCORAL)
    register("mmd", MMD)
    register("self-training", SelfTraining)
    # The same names for --task segment/detect are other methods (imgxfer.adapters.dense);
    # they declare those tasks, so the registry keeps them apart.
    from imgxfer.adapters.dense import ADAPTERS

    for adapter in ADAPTERS:
        register(adapter.name, adapter)


@hookimpl
def register_commands(cli: Any) -> None:
    from imgxfer.commands import cache, caption, explain, generate, plugin, predict, tune

    for command in (caption.caption, generate.generate_command, predict.predict_command,
                    explain.explain_command, tune.tune_command, cache.cache_command,
                    plugin.plugin_group):
        cli.add_command(command)
