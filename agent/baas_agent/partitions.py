"""Partitions of a disk just written: the kernel learns the new table, its nodes appear.

A setup may put a custom init image on a partition of the disk its system image
covers (the system on ``/dev/sda``, the init filesystem on ``/dev/sda3``). The
server orders the custom init image last; between the two writes the kernel
must re-read the disk's partition table (``BLKRRPART``), and the partition's
device node appear (devtmpfs creates it a moment later).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from baas_agent.disks import is_block_device

log = logging.getLogger(__name__)
BLKRRPART = 0x125F  # _IO(0x12, 95): re-read the partition table
DEVICE_WAIT = 10.0  # seconds a partition's node may take to appear


def reread(path: Path) -> bool:
    """Have the kernel re-read the partition table of the whole disk ``path``.

    True when it did; False for files, partitions (EINVAL) and disks whose
    partitions are in use (EBUSY) — none of which stops a flash.
    """
    if not is_block_device(path):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("%s: not opened to re-read its partitions: %s", path, exc)
        return False
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError as exc:
        log.debug("%s: partition table not re-read: %s", path, exc)
        return False
    finally:
        os.close(fd)
    log.info("%s: partition table re-read", path)
    return True


def wait_for(
    path: Path,
    *,
    timeout: float = DEVICE_WAIT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until the device node ``path`` (under /dev) exists; whether it does.

    Other paths (files of a test or a VM) are not waited for.
    """
    if path.exists() or not str(path).startswith("/dev/"):
        return path.exists()
    deadline = clock() + timeout
    while clock() < deadline:
        sleep(0.1)
        if path.exists():
            return True
    return False


# -- telling the kernel a partition itself (BLKPG) ---------------------------------------

BLKPG = 0x1269  # _IO(0x12, 105)
BLKPG_ADD_PARTITION = 1


class _BlkpgPartition(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_longlong),
        ("length", ctypes.c_longlong),
        ("pno", ctypes.c_int),
        ("devname", ctypes.c_char * 64),
        ("volname", ctypes.c_char * 64),
    ]


class _BlkpgIoctlArg(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int),
        ("flags", ctypes.c_int),
        ("datalen", ctypes.c_int),
        ("data", ctypes.c_void_p),
    ]


def add(path: Path, number: int, start: int, length: int) -> bool:
    """Tell the kernel partition ``number`` of the whole disk ``path`` (bytes), as ``partx -a``.

    For a kernel that does not read GPTs itself (built without
    ``CONFIG_EFI_PARTITION``): ``BLKRRPART`` then leaves no partitions. True
    when the kernel knows the partition now (added, or there already: EBUSY).
    """
    partition = _BlkpgPartition(start=start, length=length, pno=number)
    arg = _BlkpgIoctlArg(
        op=BLKPG_ADD_PARTITION,
        datalen=ctypes.sizeof(partition),
        data=ctypes.cast(ctypes.pointer(partition), ctypes.c_void_p),
    )
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKPG, arg)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        log.warning("%s: partition %d not added: %s", path, number, exc)
        return False
    finally:
        os.close(fd)
    log.info("%s: partition %d told to the kernel", path, number)
    return True
