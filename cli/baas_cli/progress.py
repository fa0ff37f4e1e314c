"""The progress bar of a transfer: the bytes that actually crossed the network."""

from __future__ import annotations

import sys
from typing import Any

from baas_cli import output


class Transfer:
    """The bar, drawn by rich at most ten times a second on its own thread; ``quiet``
    (``--json``): no bar, and rich is not even imported (the bytes are only counted)."""

    def __init__(self, label: str, *, quiet: bool) -> None:
        self.label, self.quiet = label, quiet
        self.done = 0
        self.total: int | None = None
        self.progress: Any = None if quiet else _bar()
        self.task: Any = None

    def __enter__(self) -> Transfer:
        if self.progress is not None:
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.progress is None:
            return
        if self.total is not None and self.done > self.total:  # an estimate (zstd) fell short
            self.total = self.done
            self.progress.update(self.task, total=self.done)
        self.progress.update(self.task, advance=amount)

    def set_total(self, total: int) -> None:
        """The bytes still to move, from now on (a resumed transfer starts part-way)."""
        self.total = self.done + total
        if self.progress is not None:
            self.progress.update(self.task, total=self.total)

    def say(self, message: str) -> None:
        if self.progress is None:  # plain text: importing rich for one line costs ~20 ms
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
        else:
            self.progress.console.print(message, markup=False, highlight=False)

    def push_report(self) -> Any:
        from baas_cli.push import Report

        return Report(say=self.say, on_sent=self.advance, set_total=self.set_total)

    def pull_report(self) -> Any:
        from baas_cli.pull import PullReport

        return PullReport(say=self.say, on_received=self.advance, set_total=self.set_total)


def _bar() -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=output.errors,
        transient=False,
    )
