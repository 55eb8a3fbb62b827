"""What the documentation's components table and registry.toml's built-in entry say
matches what the built-in plugin registers (`imgxfer list`); issue 29, item 10 found both
behind. The table moved from the README to docs/user-guide/components.md with the rest of
the user manual (issue 28)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgxfer.plugin import host as plugins
from imgxfer.plugin.install import known_plugins

COMPONENTS = Path(__file__).resolve().parents[1] / "docs" / "user-guide" / "components.md"
NUMBERS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13}


@pytest.fixture(scope="module")
def builtin():
    """Built-in component names by kind (``folder:`` for a family), as `imgxfer list` has them."""
    registry = plugins.PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all().registry
    return {kind: {c.name for c in registry.all(kind) if c.plugin == "builtin"}
            for kind in registry.components}


def _row(kind: str) -> str:
    (row,) = [line for line in COMPONENTS.read_text(encoding="utf-8").splitlines()
              if line.startswith(f"| {kind} |")]
    return row


@pytest.mark.parametrize("kind", ["datasets", "encoders", "captioners", "generators",
                                  "adapters"])
def test_the_components_table_names_every_builtin(builtin, kind):
    named = set(re.findall(r"`([a-z0-9_-]+:?)[A-Z]*`", _row(kind)))
    assert builtin[kind] - named == set(), f"the components page's {kind} row leaves these out"


def test_registry_toml_counts_the_builtin_adapters(builtin):
    text = known_plugins()["builtin"].description
    said = re.search(r"(\w+) adapters", text).group(1)
    assert NUMBERS.get(said, said) in (len(builtin["adapters"]), str(len(builtin["adapters"])))
    for family in sorted(n for n in builtin["datasets"] if n.endswith(":")):
        assert family in text
