"""The layers checked and unpacked at the same time, on two cores.

Reading every layer for hostile entries (:mod:`.layers`) and ``umoci raw
unpack --rootless`` both decompress every layer; run one after the other they
were the longest part of an import. Here the check runs on a thread while umoci
unpacks into the job's private folder (``rootfs``, under the job's 0700 work
folder), and nothing of that folder is used — no filesystem is made of it —
until every layer has passed. umoci confines what it writes to its folder (an
absolute or ``..`` path lands inside it, a symlink is resolved inside it, a
hard link that leaves it fails, a device node becomes an empty file), so a
hostile layer can at worst fill the folder, which is watched for size.

When a layer is refused, umoci is stopped at once (the watch looks every tenth
of a second), the folder is removed, and the job fails with the check's reason.
The unpacked size is enforced twice, as before: by the check, from the layers'
headers, and by the watch of the folder, while umoci writes.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from imports.exceptions import ImportRefused, ImportTooLarge
from imports.services import layers as layer_checks
from imports.services.oci import Context, layout_layers
from imports.services.tools import ToolFailed, ToolStopped, Watch, run_tool

POLL = 0.1  # how soon a refused layer stops umoci
SIZE_EVERY = 0.5  # how often the folder is measured (a walk of the whole tree)


class _Abandoned(Exception):
    """The check was told to stop (the unpack was stopped for another reason)."""


class LayerCheck(threading.Thread):
    """Every layer read, in order, and checked on a thread of its own; ``error`` is what
    refused it (ImportRefused, ImportTooLarge), ``tree`` the result once it ended well.

    It touches no database (the job's progress is reported by the thread that runs
    the unpack), and stops between two members once ``stop`` is set."""

    def __init__(self, blobs: list[tuple[Path, str]], ctx: Context):
        super().__init__(name="layer-check", daemon=True)
        self.blobs, self.limit, self.limit_why = blobs, ctx.limit, ctx.limit_why
        self.tree = layer_checks.Tree()
        self.done = 0  # layers checked
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for number, (path, media_type) in enumerate(self.blobs, start=1):
                self._check(number, path, media_type)
                self.done = number
        except _Abandoned:
            pass
        except BaseException as exc:  # raised again by the thread that waits for the check
            self.error = exc

    def _check(self, number: int, path: Path, media_type: str) -> None:
        try:
            with layer_checks.open_layer(path, media_type) as stream:
                layer_checks.scan_layer(stream, self.tree, limit=self.limit, progress=self._poll)
        except layer_checks.LayerRefused as exc:
            raise ImportRefused(f"Layer {number} {exc}. Nothing was stored.") from exc
        except layer_checks.LayersTooLarge as exc:
            raise ImportTooLarge(
                f"The layers unpack to more than {self.limit} bytes ({self.limit_why}): "
                f"{exc.size} bytes by layer {number}. Stopped while checking them; nothing "
                "was stored."
            ) from exc

    def _poll(self) -> None:
        if self.stop.is_set():
            raise _Abandoned()


def check_and_unpack(layout: Path, ctx: Context) -> tuple[layer_checks.Tree, Path]:
    """Every layer checked while ``umoci raw unpack --rootless`` lays them out (whiteouts
    applied) in ``rootfs``; returns both once every layer passed and umoci ended.

    Raises the check's ImportRefused or ImportTooLarge (before any other error: a
    hostile layer may also make umoci fail), ToolStopped (cancel, deadline, the folder
    past the limit), ToolFailed (umoci failed on layers that passed). On any error the
    folder is removed."""
    rootfs = ctx.work / "rootfs"
    check = LayerCheck(layout_layers(layout)[1], ctx)
    check.start()
    try:
        run_tool(
            ["umoci", "raw", "unpack", "--rootless", "--image", f"{layout}:image", rootfs],
            watch=_watch(check, ctx, rootfs),
            poll=POLL,
        )
        _wait(check, ctx.watch(None, 0, ""), ctx)
    except ToolFailed:
        check.join()  # its reason, if it has one, says more than umoci's
        _give_up(check, rootfs)
        raise
    except BaseException:
        check.stop.set()
        check.join()
        _give_up(check, rootfs)
        raise
    if check.error is not None:
        _give_up(check, rootfs)
    return check.tree, rootfs


def _watch(check: LayerCheck, ctx: Context, rootfs: Path) -> Watch:
    """Stop umoci as soon as the check refused a layer; else as the job's watch says (the
    folder's size measured every SIZE_EVERY seconds); report the layers checked."""
    size_watch = ctx.watch(rootfs, ctx.limit, "unpacked")
    last = {"measured": 0.0, "done": 0}

    def watch() -> str | None:
        if check.error is not None:
            return "A layer was refused."
        _report(check, ctx, last)
        now = time.monotonic()
        if now - last["measured"] < SIZE_EVERY:
            return None
        last["measured"] = now
        return size_watch()

    return watch


def _wait(check: LayerCheck, stop: Watch, ctx: Context) -> None:
    """umoci ended: wait for the check, still stopping for a cancel or the deadline."""
    last = {"done": 0}
    while check.is_alive():
        check.join(POLL)
        _report(check, ctx, last)
        reason = stop()
        if reason is not None:
            raise ToolStopped(reason)
    _report(check, ctx, last)


def _report(check: LayerCheck, ctx: Context, last: dict) -> None:
    if check.done != last["done"]:
        last["done"] = check.done
        ctx.progress(layers_done=check.done)


def _give_up(check: LayerCheck, rootfs: Path) -> None:
    """Remove what umoci wrote; raise the check's error if it refused a layer."""
    shutil.rmtree(rootfs, ignore_errors=True)
    if check.error is not None:
        raise check.error
