"""The running job's side: its log, its counters, and the watch that stops its tools."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from imports.models import ImportJob as Job
from imports.services.tools import Remover, Watch, tree_size

LOG_MAX = 64 * 1024


class Progress:
    """The running job's side: its log, its counters, and the watch that stops its tools."""

    def __init__(self, job: Job):
        self.job = job
        self.deadline = time.monotonic() + settings.BAAS_IMPORT_TIMEOUT
        self._checked = 0.0
        self.remover = Remover()  # what the job no longer needs, removed while it goes on

    def log(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S.%f")[:-3]
        self.job.log = (self.job.log + f"{stamp} {line}\n")[-LOG_MAX:]
        Job.objects.filter(pk=self.job.pk).update(log=self.job.log)

    def progress(self, **fields: int) -> None:
        for name, value in fields.items():
            setattr(self.job, name, value)
        Job.objects.filter(pk=self.job.pk).update(**fields)

    def stop_reason(self, *, fresh: bool = False) -> str | None:
        """Why the job must stop now (cancelled, out of time), or None; asks the row each
        second, or at once if ``fresh``."""
        if time.monotonic() > self.deadline:
            return (
                f"The import took longer than BAAS_IMPORT_TIMEOUT ({settings.BAAS_IMPORT_TIMEOUT} "
                "s) and was stopped; nothing was stored."
            )
        now = time.monotonic()
        if fresh or now - self._checked >= 1.0:
            self._checked = now
            if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
                return "Cancelled."
        return None

    def watch(self, folder: Path | None, limit: int, what: str) -> Watch:
        """A watch that also stops once ``folder`` takes more than ``limit`` bytes."""

        def check() -> str | None:
            reason = self.stop_reason()
            if reason is not None or folder is None:
                return reason
            used = tree_size(folder)
            if what == "pulled":
                self.progress(bytes_done=used)
            if used > limit:
                return (
                    f"The image passed {limit} bytes ({self.limit_why}) while it was being "
                    f"{what} ({used} bytes so far) and was stopped; nothing was stored."
                )
            return None

        return check

    limit_why = ""
