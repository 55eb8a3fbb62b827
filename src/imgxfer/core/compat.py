"""The module paths of imgxfer 0.1, before the package took its layers (issue 27), kept
for one release: ``import imgxfer.pipeline`` still works, warns with a
DeprecationWarning and hands back the module that took its place. ``imgxfer``'s
``__init__`` installs the finder; ``imgxfer.data`` (now a package) forwards the names of
the old ``imgxfer.data`` module itself."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

REMOVED_IN = "0.3"
# old path (under imgxfer.) -> new path (under imgxfer.)
MOVED = {
    "adapters": "components.adapters",
    "adapters.adversarial": "components.adapters.adversarial",
    "adapters.baselines": "components.adapters.baselines",
    "adapters.common": "components.adapters.common",
    "adapters.dense": "components.adapters.dense",
    "adapters.discrepancy": "components.adapters.discrepancy",
    "adapters.finetune": "components.adapters.finetune",
    "adapters.linear": "components.adapters.linear",
    "adapters.regularizers": "components.adapters.regularizers",
    "adapters.selftraining": "components.adapters.selftraining",
    "artifacts": "run.artifacts",
    "augmentation": "nn.augmentation",
    "budget": "core.budget",
    "builtin": "components.builtin",
    "captioners": "components.captioners",
    "captioners.template": "components.captioners.template",
    "classifier": "nn.classifier",
    "classnames": "data.classnames",
    "commands": "cli",
    "commands.cache": "cli.cache",
    "commands.caption": "cli.caption",
    "commands.context": "cli.context",
    "commands.dense": "cli.dense",
    "commands.explain": "cli.explain",
    "commands.generate": "cli.generate",
    "commands.inputs": "cli.inputs",
    "commands.options": "cli.options",
    "commands.plugin": "cli.plugin",
    "commands.predict": "cli.predict",
    "commands.predict_dense": "cli.predict_dense",
    "commands.run_options": "cli.run_options",
    "commands.tune": "cli.tune",
    "config": "core.config",
    "datasets": "components.datasets",
    "datasets.common": "data.common",
    "datasets.csvlist": "components.datasets.csvlist",
    "datasets.digits": "components.datasets.digits",
    "datasets.fashion": "components.datasets.fashion",
    "datasets.files": "data.files",
    "datasets.folder": "components.datasets.folder",
    "datasets.layout": "data.layout",
    "datasets.mnist": "components.datasets.mnist",
    "datasets.mnistm": "components.datasets.mnistm",
    "datasets.scenes": "components.datasets.scenes",
    "datasets.tvdatasets": "components.datasets.tvdatasets",
    "dense": "tasks.dense",
    "dense.artifacts": "tasks.dense.artifacts",
    "dense.detection": "nn.dense.detection",
    "dense.evaluate": "tasks.dense.evaluate",
    "dense.features": "nn.dense.features",
    "dense.metrics": "tasks.dense.metrics",
    "dense.model": "nn.dense.model",
    "dense.record": "tasks.dense.record",
    "dense.report": "tasks.dense.report",
    "dense.run": "tasks.dense.run",
    "dense.segmentation": "nn.dense.segmentation",
    "dense.training": "nn.dense.training",
    "dense.translate": "tasks.dense.translate",
    "distributed": "core.distributed",
    "encoders": "components.encoders",
    "encoders.preprocess": "nn.preprocess",
    "encoders.smallcnn": "components.encoders.smallcnn",
    "encoders.torchvision_backbones": "components.encoders.torchvision_backbones",
    "encoders.weights": "nn.weights",
    "errors": "core.errors",
    "evaluation": "tasks.classify.evaluation",
    "explain": "tasks.classify.saliency",
    "features": "data.features",
    "generators": "components.generators",
    "generators.gan": "components.generators.gan",
    "generators.text": "nn.text",
    "generators.training": "nn.generator_training",
    "generators.translation": "components.generators.translation",
    "hookspecs": "plugin.hookspecs",
    "images": "data.images",
    "install": "plugin.install",
    "layers": "nn.layers",
    "metrics": "run.metrics",
    "nets": "nn.nets",
    "pipeline": "run.execute",
    "plan": "tasks.classify.plan",
    "plugins": "plugin.host",
    "probe": "nn.probe",
    "progress": "core.progress",
    "protocols": "plugin.protocols",
    "provenance": "plugin.provenance",
    "quality": "tasks.classify.quality",
    "registry": "plugin.registry",
    "report": "tasks.classify.report",
    "runfolder": "core.runfolder",
    "scaffold": "plugin.scaffold",
    "scenes": "data.scenes",
    "seeds": "sweep.seeds",
    "stages": "tasks.classify.stages",
    "stages.adapt": "tasks.classify.stages.adapt",
    "stages.caption": "tasks.classify.stages.caption",
    "stages.data": "tasks.classify.stages.data",
    "stages.encode": "tasks.classify.stages.encode",
    "stages.explain": "tasks.classify.stages.explain",
    "stages.generate": "tasks.classify.stages.generate",
    "synthesis": "tasks.classify.synthesis",
    "testing": "plugin.testing",
    "training": "nn.training",
    "tunable": "plugin.tunable",
    "tune_report": "sweep.tune_report",
    "tuning": "sweep.tune",
    "uncertainty": "run.uncertainty",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers only for the old paths, ahead of the path finder: an old package path
    (``imgxfer.datasets``) then never loads a second copy of a module below it."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix("imgxfer.")
        if old == fullname or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = "imgxfer." + MOVED[spec.name.removeprefix("imgxfer.")]
        warnings.warn(f"{spec.name} is now {new}; the old path goes in imgxfer "
                      f"{REMOVED_IN}.", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module was loaded under its new name already."""


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
