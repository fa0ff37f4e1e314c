"""Following a deployment: its images' progress bars and its event log, until it ends."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from baas_cli.client import Api

FINISHED = {"done", "failed", "cancelled"}
POLL_SECONDS = 1.0


def outcome(deployment: dict[str, Any]) -> int:
    """The exit status a deployment ends a command with: 0 done, 1 failed or cancelled."""
    return 0 if deployment["state"] == "done" else 1


def _event_line(event: dict[str, Any]) -> str:
    when = (event.get("created_at") or "")[11:19]
    actor = f" ({event['actor']})" if event.get("actor") else ""
    state = f" [{event['state']}]" if event.get("state") else ""
    return f"{when} {event.get('action', '')}{state}{actor}: {event.get('message', '')}"


def _label(image: dict[str, Any]) -> str:
    name = str(image.get("image") or "")[:8]
    return f"{image.get('direction', '')} {name} v{image.get('version')} → {image.get('disk')}"


def watch(
    api: Api,
    deployment_id: int,
    *,
    console: Console,
    quiet: bool = False,
    poll: float = POLL_SECONDS,
) -> dict[str, Any]:
    """Poll the deployment until it ends; draw its progress unless ``quiet``."""
    seen_events = 0
    with Progress(
        TextColumn("{task.description}"),
        TextColumn("[cyan]{task.fields[phase]}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        tasks: dict[int, Any] = {}
        state_task = progress.add_task("deployment", total=None, phase="", visible=not quiet)
        while True:
            deployment = api.get_object(f"/api/deployment/{deployment_id}")
            events = deployment.get("events") or []
            for event in events[seen_events:]:
                if not quiet:
                    progress.console.print(_event_line(event))
            seen_events = len(events)
            progress.update(
                state_task,
                description=f"#{deployment_id} on {deployment['machine']}",
                phase=deployment["state"],
            )
            for index, image in enumerate(deployment.get("images") or []):
                total = image.get("bytes_total") or None
                if index not in tasks:
                    tasks[index] = progress.add_task(_label(image), total=total, phase="")
                progress.update(
                    tasks[index],
                    total=total,
                    completed=image.get("bytes_done") or 0,
                    phase=image.get("phase") or "",
                )
            if deployment["state"] in FINISHED:
                progress.update(state_task, total=1, completed=1)
                if deployment["state"] == "done":
                    for index, task in tasks.items():
                        done = deployment["images"][index]
                        progress.update(task, completed=done.get("bytes_total") or 0)
                return deployment
            time.sleep(poll)
