"""The progress bar of a transfer: the bytes that actually crossed the network."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from baas_cli import output


class Transfer:
    def __init__(self, label: str, *, quiet: bool) -> None:
        self.label, self.quiet = label, quiet
        self.done = 0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=output.errors,
            disable=quiet,
            transient=False,
        )
        self.task: Any = None

    def __enter__(self) -> Transfer:
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def advance(self, amount: int) -> None:
        self.done += amount
        total = self.progress.tasks[0].total if self.progress.tasks else None
        if total is not None and self.done > total:  # an estimate (zstd) fell short
            self.progress.update(self.task, total=self.done)
        self.progress.update(self.task, advance=amount)

    def set_total(self, total: int) -> None:
        """The bytes still to move, from now on (a resumed transfer starts part-way)."""
        self.progress.update(self.task, total=self.done + total)

    def say(self, message: str) -> None:
        if self.quiet:
            output.errors.print(message, markup=False, highlight=False)
        else:
            self.progress.console.print(message, markup=False, highlight=False)

    def push_report(self) -> Any:
        from baas_cli.push import Report

        return Report(say=self.say, on_sent=self.advance, set_total=self.set_total)

    def pull_report(self) -> Any:
        from baas_cli.pull import PullReport

        return PullReport(say=self.say, on_received=self.advance, set_total=self.set_total)
