"""MkDocs hooks for the CLI reference (docs/reference/cli.md, rendered by mkdocs-click).

`imgxfer` adds most of its commands lazily (``imgxfer.cli.builtin.LAZY_COMMANDS``), so the
group that mkdocs-click walks holds only run, plugins, list, install and uninstall until
a command is asked for. Adding imgxfer's own commands before the pages render puts every
one of them in the reference; a command added to that table appears there without editing
the page. Once the page is rendered, every command and every option of each is looked
for in it, and one that is missing is a warning, which fails the strict build (CI).
Plugins' commands are theirs to document.

Two fixes to what mkdocs-click writes. Click keeps a paragraph verbatim when a line
holding only ``\\b`` starts it (imgxfer's "Examples:" blocks); mkdocs-click drops that
line and Markdown would run the paragraph's lines together, so a paragraph of that shape
(a line ending in a colon, then lines indented by two spaces) becomes that line and a code
block. And an option without a default shows "Sentinel.UNSET" in the table since
Click 8.3 (mkdocs-click 0.9; mkdocs/mkdocs-click#95), so that cell, like an explicit
None, shows a dash: the option's help says what applies.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterator
from typing import Any

import click
from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

CLI_PAGE = "reference/cli.md"
# The default cell of an options-table row, when there is no default.
NO_DEFAULT = re.compile(r"\| (?:`Sentinel\.UNSET`|None) \|$")
# A logger under "mkdocs": its warnings count for --strict.
log = logging.getLogger("mkdocs.hooks.cli_reference")


def on_config(config: Any) -> Any:
    from imgxfer.cli.app import cli
    from imgxfer.cli.builtin import add_builtin_commands

    add_builtin_commands(cli)
    config.markdown_extensions.append(ClickHelpFixes())
    return config


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri == CLI_PAGE:
        from imgxfer.cli.app import cli

        text = html.unescape(re.sub(r"<[^>]+>", " ", html_text))
        for missing in _missing(cli, "imgxfer", text):
            log.warning("%s: the generated reference lacks %s", CLI_PAGE, missing)
    return html_text


def _missing(command: click.Command, path: str, text: str) -> Iterator[str]:
    """The commands (by their path) and options that do not appear in ``text``."""
    if path not in text:
        yield f"the command '{path}'"
    for param in command.params:
        for option in param.opts + param.secondary_opts:
            whole = rf"(?<![\w-]){re.escape(option)}(?![\w-])"  # not --foo in --foo-bar
            if option.startswith("-") and not re.search(whole, text):
                yield f"the option {option} of '{path}'"
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _missing(sub, f"{path} {name}", text)


class ClickHelpFixes(Extension):
    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 (Markdown's name)
        # After mkdocs-click (141) has written the commands' help, before fenced code (25).
        md.preprocessors.register(_FixClickHelp(md), "imgxfer_click_help", 140)


class _FixClickHelp(Preprocessor):
    """Verbatim blocks become code blocks; an option without a default gets a dash."""

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(lines):
            end = _verbatim_end(lines, i)
            if end > i + 1:
                out += [lines[i], "", "```text", *(line[2:] for line in lines[i + 1:end]),
                        "```"]
                i = end
            else:
                out.append(NO_DEFAULT.sub("| – |", lines[i]))
                i += 1
        return out


def _verbatim_end(lines: list[str], i: int) -> int:
    """Where the verbatim block that starts at line ``i`` ends (``i`` when none does): a
    paragraph's first line that ends in a colon, then lines indented by two spaces."""
    if not lines[i].rstrip().endswith(":") or (i > 0 and lines[i - 1].strip()):
        return i
    end = i + 1
    while end < len(lines) and lines[end].startswith("  ") and lines[end].strip():
        end += 1
    return end
