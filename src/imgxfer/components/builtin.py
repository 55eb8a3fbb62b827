"""The built-in plugin: registers imgxfer's own components through the public hooks,
exactly as a third-party plugin would."""

from __future__ import annotations

from imgxfer.plugin.hookspecs import Register, hookimpl


@hookimpl
def register_datasets(register: Register) -> None:
    from imgxfer.components.datasets import (
        csvlist,
        digits,
        fashion,
        folder,
        mnist,
        mnistm,
        scenes,
        tvdatasets,
    )

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
    from imgxfer.components.encoders import torchvision_backbones as tvb
    from imgxfer.components.encoders.smallcnn import SmallCNN

    register("smallcnn", SmallCNN)
    for name, backbone in tvb.BACKBONES.items():
        register(name, tvb.factory(name), description=backbone.description)


@hookimpl
def register_captioners(register: Register) -> None:
    from imgxfer.components.captioners.template import TemplateCaptioner

    register("template", TemplateCaptioner)


@hookimpl
def register_generators(register: Register) -> None:
    from imgxfer.components.generators.gan import ConditionalGAN

    register("gan", ConditionalGAN)


@hookimpl
def register_adapters(register: Register) -> None:
    from imgxfer.components.adapters.adversarial import CDAN, DANN
    from imgxfer.components.adapters.baselines import SourceOnly, TargetOnly
    from imgxfer.components.adapters.discrepancy import MMD, DeepCORAL
    from imgxfer.components.adapters.finetune import FineTune
    from imgxfer.components.adapters.linear import LinearProbe, LinearProbeFineTune
    from imgxfer.components.adapters.selftraining import SelfTraining

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
    # The same names for --task segment/detect are other methods (imgxfer.components.adapters.dense);
    # they declare those tasks, so the registry keeps them apart.
    from imgxfer.components.adapters.dense import ADAPTERS

    for adapter in ADAPTERS:
        register(adapter.name, adapter)
