"""The plugin API is ``imgxfer`` itself: every public name resolves, type checkers see the
same names as the lazy table, importing it loads no torch, and the import paths of
imgxfer 0.1 still work for one release with a DeprecationWarning naming the new one."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import imgxfer
from imgxfer.core.compat import MOVED


def test_every_public_name_resolves():
    missing = [name for name in imgxfer.__all__ if getattr(imgxfer, name, None) is None]
    assert missing == []


def test_type_checkers_see_the_lazy_names():
    tree = ast.parse(Path(imgxfer.__file__).read_text(encoding="utf-8"))
    (block,) = [n for n in tree.body if isinstance(n, ast.If)
                and ast.unparse(n.test) == "TYPE_CHECKING"]
    typed = {(node.module, a.asname or a.name) for node in block.body
             if isinstance(node, ast.ImportFrom) for a in node.names}
    lazy = {(f"imgxfer.{module}", name) for module, names in imgxfer._LAZY.items()
            for name in names}
    assert typed == lazy
    assert set(imgxfer.__all__) == {n for _, n in lazy} | {"__version__", "hookimpl", "Register"}


def test_importing_the_api_loads_no_torch():
    code = "import sys, imgxfer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = imgxfer.Nope


@pytest.mark.parametrize("old", ["pipeline", "encoders.preprocess", "plugins", "testing",
                                 "protocols", "datasets.common", "commands.predict"])
def test_old_import_paths_warn_and_give_the_new_module(old):
    new = importlib.import_module(f"imgxfer.{MOVED[old]}")
    sys.modules.pop(f"imgxfer.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"imgxfer.{MOVED[old]}"):
        module = importlib.import_module(f"imgxfer.{old}")
    assert module is new


def test_every_old_path_names_a_module_that_exists():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for new in MOVED.values():
            importlib.import_module(f"imgxfer.{new}")


def test_the_old_data_module_names_are_forwarded():
    from imgxfer.data.dataset import ImageDataset

    with pytest.warns(DeprecationWarning, match="imgxfer.data.dataset.ImageDataset"):
        from imgxfer.data import ImageDataset as old
    assert old is ImageDataset
