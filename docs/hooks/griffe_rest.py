"""A Griffe extension for the API reference: imgxfer's docstrings are written in the
reStructuredText of Python's own help (``:func:`name```, a paragraph ending in ``::``
before an indented example), while the site renders them as Markdown. This turns those
two constructs into their Markdown equivalents, so the reference shows ``name`` as code
and the example as a code block instead of stray role markers and colons."""

from __future__ import annotations

import re
from typing import Any

import griffe

# :func:`x`, :class:`~a.b.C`, :py:meth:`x`: the role and its tilde go, the name stays code.
ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):`~?([^`]+)`")
# A paragraph ending in "::" announces a literal block: Markdown needs one colon and sees
# the indented block as code on its own.
LITERAL = re.compile(r"::\n\n")


def to_markdown(text: str) -> str:
    return LITERAL.sub(":\n\n", ROLE.sub(r"`\1`", text))


class RestToMarkdown(griffe.Extension):
    """Rewrites each object's docstring once, when Griffe loads the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
