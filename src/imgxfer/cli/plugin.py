"""`imgxfer plugin new`: tools for plugin authors (the library side is :mod:`imgxfer.plugin.scaffold`)."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import click

from imgxfer.plugin.scaffold import KINDS, new_plugin, next_steps


@click.group("plugin", short_help="Tools for writing plugins (plugin new).")
def plugin_group() -> None:
    """Tools for plugin authors. `imgxfer plugins` lists the installed plugins."""


@plugin_group.command("new", short_help="Write the skeleton of a plugin package.")
@click.argument("name")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), metavar="KIND",
              help=f"Component kind: {', '.join(KINDS)} (default encoder; repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder that receives imgxfer-NAME/.")
def new_command(name: str, kinds: tuple[str, ...], out: str) -> None:
    """Write OUT/imgxfer-NAME: pyproject.toml with the entry point NAME, a working
    component of each KIND registered as NAME, a README and tests that run the
    contract kit (imgxfer.plugin.testing). Then `pip install -e` the folder and run its tests.

    \b
    Examples:
      imgxfer plugin new my-encoder
      imgxfer plugin new shapes --kind dataset --out ~/code
      imgxfer plugin new ncm --kind adapter --kind generator
    """
    from imgxfer.cli.context import current_registry
    from imgxfer.plugin.hookspecs import ENTRY_POINT_GROUP
    from imgxfer.plugin.install import known_plugins

    # Names already in use: installed entry points, registry.toml, loaded components (the
    # host is loaded already: this command comes from the built-in plugin).
    installed = {ep.name: ep.dist.name if ep.dist is not None else ep.value
                 for ep in md.entry_points(group=ENTRY_POINT_GROUP)}
    registry = current_registry()
    skeleton = new_plugin(name, kinds, out, registry=registry, entry_points=installed,
                          known=known_plugins())
    shown = _shown(skeleton.folder)
    what = ", ".join(f"{k} {skeleton.name!r}" for k in skeleton.kinds)
    click.echo(f"created {shown}/ ({what}):")
    for rel in skeleton.files:
        if rel.name not in (".gitignore", "py.typed"):
            click.echo(f"  {rel.as_posix()}")
    click.echo("next:")
    for step in next_steps(skeleton, shown):
        click.echo(f"  {step}")


def _shown(folder: Path) -> str:
    """The folder relative to the current one when it lies below it."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)
