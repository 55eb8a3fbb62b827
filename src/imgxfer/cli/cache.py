"""`imgxfer cache`: where the feature cache is, how much it holds, and clearing it.

The linear probes (`linear`, and the initial probes of `lp-ft` and `self-training`) keep
the features of their frozen encoder there (:mod:`imgxfer.data.features`), so a second probe
of the same encoder on the same images reads them instead of encoding again. The folder is
``$IMGXFER_CACHE/features`` (default ``~/.cache/imgxfer/features``) and is kept under
``$IMGXFER_CACHE_MAX_MB`` megabytes.
"""

from __future__ import annotations

from pathlib import Path

import click

from imgxfer.core.errors import UserError
from imgxfer.data.features import cache_entries, cache_limit_bytes, default_cache_dir, prune_cache


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _clear(folder: Path, entries: list[tuple[Path, int]]) -> None:
    """Remove every cache file; what could not be removed (a read-only folder) is one
    sentence with the first reason, not a warning per file."""
    failed: list[tuple[Path, OSError]] = []
    removed = set(prune_cache(folder, 0, failed))
    freed = sum(size for path, size in entries if path in removed)
    done = f"removed {len(removed)} cached feature file(s) ({_size(freed)}) from {folder}"
    if not failed:
        click.echo(done)
        return
    path, error = failed[0]
    reason = error.strerror or type(error).__name__
    raise UserError(f"{done}, but could not remove {len(failed)} ({reason.lower()}, e.g. "
                    f"{path.name}): is the folder writable?")


@click.command("cache", short_help="Show or clear the feature cache.")
@click.option("--clear", is_flag=True, help="Remove every cached feature file.")
def cache_command(clear: bool) -> None:
    """Show the feature cache (folder, files, size, limit), or clear it.

    The folder is $IMGXFER_CACHE/features (default ~/.cache/imgxfer/features); runs keep it
    under $IMGXFER_CACHE_MAX_MB megabytes (default 2048) by removing the least recently
    used files. Only the cache's own files (64 hex digits + .safetensors) are counted or
    removed; anything else in the folder is left alone.
    """
    folder = default_cache_dir()
    limit = cache_limit_bytes()
    entries = cache_entries(folder)
    total = sum(size for _, size in entries)
    if clear:
        _clear(folder, entries)
        return
    click.echo(f"folder: {folder}")
    click.echo(f"files:  {len(entries)} ({_size(total)}; limit {_size(limit)}, "
               "IMGXFER_CACHE_MAX_MB)")
