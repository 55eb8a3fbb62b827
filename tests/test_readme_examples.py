"""The README's Python examples run as written: the library call, the plugin encoder, the
generator and adapter written from the protocols, and the contract checks of them."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from imgxfer.plugin.testing import check_encoder

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _example(word: str) -> str:
    (code,) = [c for c in _examples() if word in c]
    return code


def _run(code: str, namespace: dict | None = None) -> dict:
    namespace = {} if namespace is None else namespace
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # examples teach current paths
        exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_the_readme_has_the_examples_this_file_runs():
    assert len(_examples()) == 4


def _registered(namespace: dict, hook: str) -> dict:
    found: dict = {}
    namespace[hook](lambda name, factory, **_: found.setdefault(name, factory))
    return found


def test_the_plugin_encoder_example_keeps_its_contract():
    namespace = _run(_example("class Resnet18"))
    encoder = _registered(namespace, "register_encoders")["my-resnet18"]
    check_encoder(encoder, input_size=32)


def test_the_generator_and_adapter_examples_keep_their_contracts():
    namespace = _run(_example("class MeanGenerator"))
    assert set(_registered(namespace, "register_generators")) == {"mean"}
    assert set(_registered(namespace, "register_adapters")) == {"nearest-mean"}
    _run(_example("def test_protocols"), namespace)["test_protocols"]()


@pytest.mark.slow
def test_the_library_call_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its runs/ folder goes here
    namespace = _run(_example("result = run("))
    assert (namespace["result"].folder / "metrics.json").is_file()
