"""What a campaign launched from the command line shows while it runs.

On a terminal: a live display (rich, which Dagster already installs) with
this launch's recordings and sortings done out of their total, the runs in
flight, failures, elapsed time and an estimate of the time left, with one line
per finished run printed above it.  Anywhere else (a pipe, a log file, CI):
the same lines only, so logs stay plain text.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class CampaignCounts:
    """A launch's progress after one look at its runs."""

    recordings_done: int
    recordings_total: int
    sortings_done: int
    sortings_total: int
    failed: int
    in_flight: int


class LiveProgress:
    """A live campaign display on a terminal; plain lines elsewhere.  Use as a context manager."""

    def __init__(self, stream: TextIO | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.progress import TimeRemainingColumn

        self.console = Console(file=stream or sys.stdout, highlight=False)
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self._recordings = self.progress.add_task("recordings", total=None, note="")
        self._sortings = self.progress.add_task("sortings", total=None, note="")

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def say(self, message: str) -> None:
        """One line, above the live display when there is one."""
        if self.live:
            self.console.print(message, markup=False)
        else:
            print(message, file=self.console.file, flush=True)

    def update(self, counts: CampaignCounts) -> None:
        self.progress.update(self._recordings, completed=counts.recordings_done, total=counts.recordings_total)
        note = f"{counts.in_flight} running or queued" + (f", {counts.failed} failed" if counts.failed else "")
        self.progress.update(
            self._sortings, completed=counts.sortings_done, total=counts.sortings_total, note=note
        )


def print_line(message: str) -> None:
    print(message, flush=True)


def one_line(message: str) -> str:
    """A progress message on one line: a multi-line error keeps its first line and its last error line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message
    errors = [line for line in lines[1:] if re.match(r"^[\w.]+(Error|Exception|Failure)\b", line)]
    return f"{lines[0]} ... {errors[-1] if errors else lines[-1]}"


def progress_printer(verbose: int, say: Callable[[str], None]) -> Callable[[str], None]:
    """One line per finished run; -v shows errors in full."""
    return say if verbose else (lambda message: say(one_line(message)))
