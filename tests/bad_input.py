"""Mistakes in the run options that `imgxfer run` and `imgxfer tune` share, with the
sentence each must end in, and the check that an answer is that one sentence: both
commands' bad-input tests take them from here."""

from __future__ import annotations

RUN_OPTION_MISTAKES = [
    (["--encoder", "resnet999"], "unknown encoder 'resnet999'; available: convnext_tiny,"),
    (["--source", "nowhere"], "unknown dataset 'nowhere'; available:"),
    (["--config", "missing.toml"], "config file 'missing.toml' does not exist."),
    (["--shots", "25"], "class 'horizontal' of 'tiny-target' has 30 images: too few for 25 shots"),
    (["--encoder-opt", "depth=3"], "encoder 'smallcnn' has no option 'depth'"),
    (["--encoder-opt", "width"], "--encoder-opt expects key=value"),
    (["--generator-time", "soon"], "cannot read the duration 'soon'"),
    (["--device", "tpu"], "device must be auto, cpu"),
    (["--seed", "-1"], "seed must be between 0 and 4294967295, got -1."),
    (["--seed", str(2**32)], "seed must be between 0 and 4294967295, got 4294967296."),
    (["--encoder-opt", "lr=nan"], "encoder 'smallcnn': option lr must be a finite number, "
                                  "got nan."),
    (["--adapter-opt", "lr=-inf"], "adapter 'finetune': option lr must be a finite number"),
    (["--test-fraction", "nan"], "test_fraction must be a finite number, got nan."),
    (["--tracker", "wandb"], "Invalid value for '--tracker': 'wandb' is not one of 'none', "
                             "'tensorboard', 'mlflow'."),
    (["--tracker-uri", "boards"], "--tracker-uri boards says where a tracker writes, so it "
                                  "needs --tracker tensorboard or --tracker mlflow."),
]


def assert_one_sentence(result, message: str) -> None:
    """Exit status 2 and one line, ``error: ...`` holding ``message``, no traceback."""
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
