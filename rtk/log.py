"""How stages report progress: the `Log` callable they take, `info`, its default, and `progress`,
the bar of a long loop (training, INT8 tuning).

Progress and messages go to stderr; results (tables, JSON paths) to stdout.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

Log = Callable[[str], None]  # one progress line; stages take `log: Log = info`


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """A rich progress bar on a terminal; elsewhere (a log file, CI) nothing live, only the lines
    given to `note`."""

    def __init__(self, log: Log, bar: Any = None, task: Any = None):
        self.log, self.bar, self.task = log, bar, task

    def update(self, done: int, stats: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, stats=stats)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message)  # above the live bar
        else:
            self.log(message)


@contextlib.contextmanager
def progress(label: str, total: int, *, start: int = 0, wanted: bool = True, log: Log = info) -> Iterator[Progress]:
    """A Progress over `total` steps from `start`: steps done, stats, elapsed and remaining time on
    stderr when it is a terminal and the bar is `wanted`; `note` lines go to `log` otherwise."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar

    console = Console(stderr=True)
    if not (wanted and console.is_terminal):
        yield Progress(log)
        return
    with Bar(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
             TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        yield Progress(log, bar, bar.add_task(label, total=total, completed=start, stats=""))
