"""One progress interface for every long loop: rich bars in the CLI, silence in tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from rich.console import Console


class Task(Protocol):
    def advance(self, n: int = 1, **info: float | str) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> AbstractContextManager[Task]: ...

    def log(self, message: str) -> None: ...


class _NullTask:
    def advance(self, n: int = 1, **info: float | str) -> None:
        pass


class NullProgress:
    """Discards everything; the default for library calls and tests."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        yield _NullTask()

    def log(self, message: str) -> None:
        pass


class RichProgress:
    """Renders each task as a rich progress bar with its latest numbers (loss, acc...)."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichBar
        from rich.table import Column

        # One line that fits 80 columns whole: the description, the count and the time
        # never shrink; the bar takes what is left (it shrank the count to '1500/…'
        # before); the numbers come last, at most 24 columns (two losses), cut with '…'
        # beyond. One time column: the time left, the time taken once finished.
        whole = Column(no_wrap=True)
        bar = RichBar(
            TextColumn("[bold]{task.description}", table_column=whole),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(elapsed_when_finished=True,
                                table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[info]}",
                       table_column=Column(no_wrap=True, overflow="ellipsis", max_width=24)),
            console=self.console, transient=False, expand=True,
        )

        class _Task:
            def advance(self, n: int = 1, **info: float | str) -> None:
                text = "  ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
                )
                bar.update(task_id, advance=n,
                           **cast("dict[str, Any]", {"info": text} if info else {}))

        with bar:
            task_id = bar.add_task(description, total=total, info="")
            yield _Task()

    def log(self, message: str) -> None:
        self.console.print(message)


class Labelled:
    """Another progress with ``suffix`` after every task's description, so two fits of one
    component (an adapter with and without synthetic images) have bars that say which."""

    def __init__(self, progress: Progress, suffix: str) -> None:
        self.progress, self.suffix = progress, suffix

    def task(self, description: str, total: int | None) -> AbstractContextManager[Task]:
        return self.progress.task(description + self.suffix, total)

    def log(self, message: str) -> None:
        self.progress.log(message)
