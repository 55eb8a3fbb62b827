"""Errors a user can cause. The CLI prints their message as one sentence and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (path, name, option, data); never an internal bug."""


class UnknownComponentError(UserError, KeyError):
    """A component name that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(Exception):
    """Two plugins registered the same name for the same kind (a plugin bug)."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for inclusion in a one-sentence error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
