"""``baas-agent``: check in, follow the instructions, report the result.

Usage::

    baas-agent [--server URL] [--mac MAC] [--token TOKEN]
               [--disk /dev/sda=/path/to/file ...] [--kernel-cmdline /proc/cmdline]

Server, MAC and token default to the kernel command line parameters
``baas.server``, ``baas.mac`` and ``baas.token`` (docs/agent-protocol.md §1).

Exit status: 0 when the deployment is done; 1 when it failed (the failure and
its reason were reported to the server when it could be reached); 2 for bad
arguments or a refused check-in (nothing to report to); 130 when interrupted
(reported as a failure).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import FrameType

from baas_agent import __version__
from baas_agent.client import ApiError, Client, DeploymentOver
from baas_agent.disks import DiskError, DiskMap, is_block_device
from baas_agent.log import FORMAT, LogShipper

TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from baas_agent.instructions import SyncInstruction, WriteInstruction
    from baas_agent.progress import Reporter

    T = TypeVar("T")

# The steps (baas_agent.flash, .syncback, and what they import: the instructions, progress,
# data maps, the check, compression) are imported once the check-in is sent, while the
# server works on it: off the path of a re-flash, which the agent's start-up weighs on.

log = logging.getLogger("baas_agent")
# The exit status when the server ended the deployment under the agent (cancelled).
OVER = 3
PARAMETERS = {"baas.server": "server", "baas.mac": "mac", "baas.token": "token"}


def expected() -> tuple[type[Exception], ...]:
    """The failures of a step that fail the deployment with their message (not a crash)."""
    from baas_agent.compress import CompressionError
    from baas_agent.instructions import FlashError

    return (FlashError, DiskError, CompressionError, ApiError, OSError, ValueError)


class Interrupted(Exception):
    """SIGTERM or Ctrl-C."""


def kernel_parameters(text: str) -> dict[str, str]:
    """``server``/``mac``/``token`` from ``baas.*=…`` words of a kernel command line."""
    import shlex  # only without --server/--mac/--token: not at start-up

    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    found = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key in PARAMETERS:
            found[PARAMETERS[key]] = value
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="baas-agent",
        description="The BAAS management agent: syncs user data back, flashes images.",
    )
    parser.add_argument("--server", help="the BAAS server URL (else baas.server=)")
    parser.add_argument("--mac", help="this machine's boot MAC address (else baas.mac=)")
    parser.add_argument("--token", help="the one-time boot token (else baas.token=)")
    parser.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="DEVICE=TARGET",
        help="write DEVICE's images to TARGET (a file or device); repeatable. "
        "With any mapping, unmapped devices are refused.",
    )
    parser.add_argument(
        "--kernel-cmdline",
        type=Path,
        default=Path("/proc/cmdline"),
        metavar="PATH",
        help="where to read baas.* parameters (default: /proc/cmdline)",
    )
    parser.add_argument("--retries", type=int, default=5, help="retries of a failed call")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout, seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"baas-agent {__version__}")
    return parser.parse_args(argv)


def resolve_identity(args: argparse.Namespace) -> dict[str, str]:
    """Server, MAC and token: arguments first, then the kernel command line."""
    found: dict[str, str] = {}
    if not (args.server and args.mac and args.token):
        try:
            found = kernel_parameters(args.kernel_cmdline.read_text())
        except OSError as exc:
            log.debug("no kernel command line at %s: %s", args.kernel_cmdline, exc)
    identity = {key: getattr(args, key) or found.get(key) for key in PARAMETERS.values()}
    missing = [key for key, value in identity.items() if not value]
    if missing:
        raise ValueError(
            f"missing {', '.join(missing)}: give --{' --'.join(missing)} or "
            f"baas.{'= baas.'.join(missing)}= on the kernel command line"
        )
    return identity  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; returns its exit status. Without ``argv`` (the process's own command
    line, as ``baas-agent`` runs it) the process ends there, see :func:`_end`."""
    status = _main(argv)
    if argv is None:
        _end(status)
    return status


def _end(status: int) -> None:
    """End the process now, its output flushed: the work is done and reported, and the
    interpreter's tear-down (every module and object freed) would add ~10 ms to each
    re-flash, where the agent's start and end are a large part of the time. Under a
    profiler (``python -m cProfile -o FILE -m baas_agent``) the interpreter ends as usual,
    so that the profiler writes its file."""
    if sys.getprofile() is not None:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=FORMAT)
    try:
        identity = resolve_identity(args)
        disks = DiskMap.parse(args.disk)
        client = Client(
            identity["server"], identity["token"], timeout=args.timeout, retries=args.retries
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    return run(client, mac=identity["mac"], disks=disks)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"the agent was stopped by signal {signum}")


def run(client: Client, *, mac: str, disks: DiskMap, reporter: Reporter | None = None) -> int:
    """The whole deployment with ``client`` holding the boot token. Returns the exit status."""
    try:
        checked_in = client.call_begun(
            "POST", "/api/agent/checkin", {"mac": mac, "agent_version": __version__}
        )
    except ApiError as exc:
        log.error("check-in refused: %s", exc)
        return 2
    except Interrupted as exc:
        log.error("%s", exc)
        return 130
    # The steps, while the server works on the check-in (the write and the sync: preloaded).
    from baas_agent import flash, instructions, progress, syncback  # noqa: F401

    try:
        answer = checked_in()
        client.token = _checked_in(answer)
    except (ApiError, instructions.InstructionError) as exc:
        log.error("check-in refused: %s", exc)
        return 2
    except Interrupted as exc:
        log.error("%s", exc)
        return 130
    shipper = LogShipper(client)
    log.addHandler(shipper)
    log.info("checked in: deployment %s, agent %s", answer.get("deployment"), __version__)
    given = answer.get("instructions")  # a server that gives them with the check-in
    lines: list[str] = []
    finished = False
    try:
        result, status = _deploy(client, disks, reporter or progress.Reporter(client), given)
        finished = True
    except DeploymentOver as exc:
        log.error("stopped: the deployment is over for this agent (%s)", exc)
        return OVER
    finally:
        # The lines go first — with the result, kept before it: once the result is in,
        # the deployment is over. Without a result to send, on their own.
        log.removeHandler(shipper)
        if finished:
            lines = shipper.take()
        shipper.close()
    try:
        client.post_json("/api/agent/result", {**result, **({"lines": lines} if lines else {})})
    except DeploymentOver as exc:
        log.error("the result was refused: the deployment is over for this agent (%s)", exc)
        return OVER
    except ApiError as exc:
        log.error("could not report the result: %s", exc)
        return 1
    return status


def _checked_in(answer: Any) -> str:
    from baas_agent.instructions import InstructionError

    if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
        raise InstructionError(f"the check-in answer holds no token: {answer!r}")
    token: str = answer["token"]
    return token


def _deploy(
    client: Client, disks: DiskMap, reporter: Reporter, given: Any = None
) -> tuple[dict[str, Any], int]:
    """Sync, then write; returns the result to report and the exit status.

    ``given``: the instructions the check-in's answer held, if any (else they are asked for).
    """
    from baas_agent.syncback import sync_image

    # What came back so far: a failed result says it too, so that the versions uploaded
    # before the failure are recorded (and the next sync compares with them).
    synced: list[dict[str, Any]] = []
    try:
        data = given if isinstance(given, dict) else client.get_json("/api/agent/instructions")
        syncs, writes = _instructions(data)
        tables, disks = _layouts(data, disks, [s.disk for s in syncs] + [w.disk for w in writes])
        for sync in syncs:
            if entry := _step(sync.label(), partial(sync_image, client, sync, disks, reporter)):
                synced.append(entry)
        laid = [_step(table.label(), partial(_lay, table, disks)) for table in tables]
        written = [
            _step(item.label(), partial(_write, client, item, disks, reporter)) for item in writes
        ]
    except Interrupted as exc:
        return _failed(str(exc), synced), 130
    except DeploymentOver:
        raise
    except expected() as exc:
        return _failed(str(exc), synced), 1
    except Exception as exc:
        log.exception("internal error")
        return _failed(f"internal agent error: {type(exc).__name__}: {exc}", synced), 1
    log.info("done: %d image(s) written, %d synced", len(written), len(synced))
    result = {"state": "done", "written": written, "synced": synced}
    return {**result, "layouts": laid} if laid else result, 0


def _layouts(data: dict[str, Any], disks: DiskMap, paths: list[str]) -> tuple[list[Any], DiskMap]:
    """The partition tables to make, and ``disks`` with the partitions of mapped disks.

    :mod:`baas_agent.layout` (and the GPT code) is imported only when there is a table
    to make or a path that may be a partition of a mapped disk: not at start-up.
    """
    mapped = not disks.mapping or all(path in disks.mapping for path in paths)
    if not data.get("layouts") and mapped:
        return [], disks  # what layout.with_partitions would leave as it is
    from baas_agent import layout

    tables = layout.parse(data.get("layouts"))  # a dict: _instructions checked
    return tables, layout.with_partitions(disks, paths)


def _lay(table: Any, disks: DiskMap) -> dict[str, Any]:
    from baas_agent import layout

    return layout.apply(table, disks)


def _write(
    client: Client, item: WriteInstruction, disks: DiskMap, reporter: Reporter
) -> dict[str, Any]:
    """Write one image; a partition of a disk written before it is written once it appears."""
    target = disks.target(item.disk)
    device = str(target).startswith("/dev/") or is_block_device(target)
    if device:  # a node to wait for, a table to re-read: not for a file (a test's, a VM's)
        from baas_agent import partitions

        partitions.wait_for(target)
    from baas_agent.flash import write_image

    entry = write_image(client, item, disks, reporter)
    if device:
        partitions.reread(target)
    return entry


def _failed(reason: str, synced: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A failed result; with what was brought back before the failure, if anything."""
    log.error("failed: %s", reason)
    result = {"state": "failed", "reason": reason}
    return {**result, "synced": synced} if synced else result


def _instructions(data: Any) -> tuple[list[SyncInstruction], list[WriteInstruction]]:
    from baas_agent.instructions import InstructionError, SyncInstruction, WriteInstruction

    if not isinstance(data, dict):
        raise InstructionError(f"the instructions are not an object: {data!r}")
    syncs = [SyncInstruction.from_json(item) for item in data.get("sync") or []]
    writes = [WriteInstruction.from_json(item) for item in data.get("write") or []]
    log.info("instructions: %d to sync, %d to write", len(syncs), len(writes))
    _log_mounts(data.get("mounts") or [])
    return syncs, writes


def _log_mounts(mounts: list[Any]) -> None:
    """Network mounts are the system's to attach (the agent writes nothing for them): logged."""
    for mount in mounts:
        if isinstance(mount, dict):
            log.info(
                "network mount: image %s v%s as %s at %s (%s%s)",
                mount.get("image"),
                mount.get("version"),
                mount.get("disk"),
                mount.get("url") or "no URL yet",
                mount.get("state"),
                ", TLS with a pre-shared key" if mount.get("tls") else "",
            )


def _step(label: str, action: Callable[[], T]) -> T:
    """Run one image's step; a failure's reason names the image."""
    from baas_agent.instructions import FlashError

    try:
        return action()
    except (FlashError, DeploymentOver):
        raise
    except expected() as exc:
        raise FlashError(f"{label}: {exc}") from exc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
