"""Rich progress bars with ETA, shared by every long-running command."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

#: Console for human-readable output on stderr, so stdout stays clean for JSON.
console = Console(stderr=True, soft_wrap=True)


class _InfoColumn(ProgressColumn):
    """The task's optional ``info`` field (e.g. the current loss)."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


def progress_bar(disable: bool = False) -> Progress:
    """A progress display with description, bar, count, elapsed time and ETA.

    Use as ``with progress_bar() as bar: task = bar.add_task("train", total=n)``; extra
    fields passed to ``bar.update(task, info="loss 0.42")`` are shown after the ETA.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        _InfoColumn(),
        console=console,
        disable=disable,
        transient=False,
    )
