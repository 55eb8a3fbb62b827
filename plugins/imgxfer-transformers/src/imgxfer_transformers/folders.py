"""Reading Hugging Face models from local folders: the checks that turn a wrong folder
into one sentence, and loading with ``local_files_only=True`` (nothing is downloaded,
ever) without transformers' progress bars and load reports on the terminal."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from imgxfer import UserError, check_model_folder

# What a from_pretrained of a damaged or foreign folder raises.
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError,
               ImportError)


def first_line(error: BaseException) -> str:
    """The first line of an error's text (or its type), for a one-sentence message."""
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def check_folder(path: str | Path, name: str, what: str) -> tuple[Path, str]:
    """``path`` as an absolute folder holding a saved transformers model (a
    ``config.json`` naming its ``model_type``) and that type; otherwise one
    :class:`UserError` naming the component (``name``, e.g. ``hf:PATH``) and what
    the folder should be (``what``, e.g. "an image-to-text model")."""
    folder = Path(path).expanduser()
    hint = f"give the folder of {what} saved with save_pretrained"
    if not str(path).strip() or not folder.exists():
        raise UserError(f"{name}: {str(path)!r} does not exist; {hint}.")
    if not folder.is_dir():
        raise UserError(f"{name}: {str(path)!r} is a file; {hint}.")
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{name}: {str(path)!r} is not a Hugging Face model folder (it has no "
                        f"config.json); {hint}.")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise UserError(f"{name}: the config.json in {str(path)!r} cannot be read "
                        f"({first_line(error)}).") from None
    if not isinstance(model_type, str) or not model_type:
        raise UserError(f"{name}: the config.json in {str(path)!r} names no model_type; {hint}.")
    check_model_folder(folder.resolve(), name)
    return folder.resolve(), model_type


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its progress bars and load reports (a run has its own
    progress display); its errors still raise."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_local(loader: Callable[..., Any], folder: Path, name: str, part: str,
               **kwargs: Any) -> Any:
    """``loader(folder, local_files_only=True, trust_remote_code=False, **kwargs)``: never
    a download, never the folder's own code (:func:`check_folder` has refused such folders
    already; this is the second lock). A folder it cannot read is one :class:`UserError`
    naming the ``part`` that failed (the model, its processor...)."""
    from safetensors import SafetensorError  # a damaged weights file

    try:
        with quiet_transformers():
            return loader(str(folder), local_files_only=True, trust_remote_code=False,
                          **kwargs)
    except LOAD_ERRORS + (SafetensorError,) as error:
        raise UserError(f"{name}: the {part} in {str(folder)!r} cannot be loaded "
                        f"({first_line(error)}).") from None
