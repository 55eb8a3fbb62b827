"""The Python examples of the README and of the documentation pages they moved to
(docs/, issue 28) run as written: the library call, the plugin encoder, the generator and
adapter written from the protocols, and the contract checks of them."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from imgxfer.plugin.testing import check_encoder

ROOT = Path(__file__).resolve().parents[1]
# Each page that holds Python examples, with how many: a new example on one of these
# pages needs a test here (the count fails until it has one).
PAGES = {
    "README.md": 0,
    "docs/getting-started.md": 1,
    "docs/plugins/index.md": 1,
    "docs/plugins/protocols.md": 1,
    "docs/plugins/contract-kit.md": 1,
}


def _page_examples(page: str) -> list[str]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _example(word: str) -> tuple[str, str]:
    """The one example that contains ``word``, and the page it is on."""
    (found,) = [(code, page) for page in PAGES for code in _page_examples(page) if word in code]
    return found


def _run(example: tuple[str, str], namespace: dict | None = None) -> dict:
    code, page = example
    namespace = {} if namespace is None else namespace
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # examples teach current paths
        exec(compile(code, str(ROOT / page), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_pages_have_the_examples_this_file_runs(page):
    assert len(_page_examples(page)) == PAGES[page]


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
