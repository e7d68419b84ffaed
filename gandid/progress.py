"""The console's progress bars while a run works: one per stream or loop, each with a count, a rate
and the time left."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second (samples, units, steps)."""

    def render(self, task):
        return Text("" if task.speed is None else f"{task.speed:,.1f}/s", style="cyan")


def progress_bars(console: Console) -> Progress:
    """Rank 0's bars: description, bar, done/total, rate, elapsed, remaining; gone once each is done."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)


def no_bars(console: Console) -> Progress:
    """The other processes of a group: they log each stage instead of drawing bars."""
    return Progress(console=console, disable=True)
