"""GUID partition tables (GPT): a setup's layout planned on a disk, written, and read back.

One module for the server and the agent: the server plans a setup's layout on
a machine's disk to refuse one that does not fit (with the numbers), the agent
plans it on the real disk, compares it with the table already there and
writes it when it differs. Both use :func:`plan`, so they agree on every byte.

Why the table is written here and not by ``sfdisk``: the management OS is
busybox and Python alone (``mgmt_os/debs.py``), and neither it nor the
development hosts have util-linux's ``sfdisk``; adding it would put libfdisk,
libsmartcols, libblkid and libuuid on every machine's boot and a second
parser of the table the agent must read anyway to compare. The format is
small and fixed (UEFI 2.10, chapter 5): a protective MBR in sector 0, a
92-byte header with CRC-32s in sector 1, 128 entries of 128 bytes in sectors
2-33, and the same entries and a backup header at the end of the disk.

Layout rules (:func:`plan`): partitions follow one another from 1 MiB, each
a whole number of MiB; only the last may have no size, and then takes the rest
of the disk up to the last whole MiB before the backup table.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SECTOR = 512
MIB = 1 << 20
FIRST = MIB  # the first partition starts at 1 MiB (LBA 2048), as every tool aligns
ENTRIES = 128
ENTRY_SIZE = 128
ENTRY_SECTORS = ENTRIES * ENTRY_SIZE // SECTOR  # 32
HEADER_SIZE = 92
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
MAX_LABEL = 36  # UTF-16 code units in an entry's name
# The table's sectors at the end of the disk: the backup entries and header.
TAIL = (ENTRY_SECTORS + 1) * SECTOR
# The smallest disk that holds a table and one 1 MiB partition.
MIN_DISK = FIRST + MIB + TAIL

TYPES: dict[str, str] = {
    "linux": "0fc63daf-8483-4772-8e79-3d69d8477de4",
    "root-x86-64": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
    "home": "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
    "swap": "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
    "esp": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "bios": "21686148-6449-6e6f-744e-656564454649",
}
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")


class LayoutError(ValueError):
    """A layout that cannot be, or does not fit its disk; the message has the numbers."""


def type_guid(name: str) -> str:
    """The type GUID of ``name``: a name from ``TYPES`` or a GUID. Raises LayoutError."""
    if name.lower() in TYPES:
        return TYPES[name.lower()]
    try:
        return str(uuid.UUID(name))
    except (ValueError, AttributeError, TypeError):
        known = ", ".join(TYPES)
        raise LayoutError(f"'{name}' is not a partition type: use {known} or a GUID.") from None


@dataclass(frozen=True)
class Spec:
    """A partition as a setup declares it: ``size`` in bytes, None for the rest of the disk."""

    label: str
    size: int | None
    type: str = "linux"


@dataclass(frozen=True)
class Partition:
    """A partition on a disk: ``number`` from 1, ``start`` and ``size`` in bytes."""

    number: int
    label: str
    type: str  # a type GUID, lower case
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def as_json(self) -> dict[str, object]:
        return {
            "number": self.number,
            "label": self.label,
            "type": self.type,
            "start": self.start,
            "size": self.size,
        }


def check_specs(specs: Sequence[Spec]) -> None:
    """The layout's own rules, whatever the disk. Raises LayoutError saying which."""
    if not specs:
        raise LayoutError("A partition table needs at least one partition.")
    if len(specs) > ENTRIES:
        raise LayoutError(
            f"A partition table holds at most {ENTRIES} partitions, not {len(specs)}."
        )
    seen: set[str] = set()
    for index, spec in enumerate(specs, 1):
        if not LABEL_RE.match(spec.label or "") or len(spec.label) > MAX_LABEL:
            raise LayoutError(
                f"Partition {index}: '{spec.label}' is not a label: use 1 to {MAX_LABEL} "
                "letters, digits, '.', '_' or '-', starting with a letter or digit."
            )
        if spec.label in seen:
            raise LayoutError(f"Partition {index}: the label '{spec.label}' is used twice.")
        seen.add(spec.label)
        type_guid(spec.type)
        if spec.size is None and index != len(specs):
            raise LayoutError(
                f"Partition {index} ('{spec.label}') has no size: only the last partition "
                "may take the rest of the disk."
            )
        if spec.size is not None and (spec.size <= 0 or spec.size % MIB):
            raise LayoutError(
                f"Partition {index} ('{spec.label}') is {spec.size} bytes: a size is a "
                f"positive whole number of MiB ({MIB} bytes)."
            )


def fixed_bytes(specs: Sequence[Spec]) -> int:
    """The least disk the layout needs, in bytes: the table, and at least 1 MiB for a rest."""
    return FIRST + sum(spec.size if spec.size is not None else MIB for spec in specs) + TAIL


def usable_end(disk_size: int) -> int:
    """The end of the last whole MiB before the backup table."""
    return (disk_size - TAIL) // MIB * MIB


def plan(disk_size: int, specs: Sequence[Spec]) -> list[Partition]:
    """Where each partition of ``specs`` goes on a disk of ``disk_size`` bytes.

    Partitions are contiguous from 1 MiB, never overlap, and end before the
    backup table. Raises LayoutError (with the numbers) when they do not fit.
    """
    check_specs(specs)
    needed = fixed_bytes(specs)
    if needed > disk_size:
        raise LayoutError(
            f"The partitions need {needed} bytes ({_mib(needed)}, with the partition table), "
            f"the disk has {disk_size} bytes ({_mib(disk_size)})."
        )
    placed = []
    start = FIRST
    for number, spec in enumerate(specs, 1):
        size = spec.size if spec.size is not None else usable_end(disk_size) - start
        placed.append(Partition(number, spec.label, type_guid(spec.type), start, size))
        start += size
    return placed


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB" if size % MIB else f"{size // MIB} MiB"


def partition_path(disk: str, number: int) -> str:
    """Linux's name for partition ``number`` of ``disk``: /dev/sda2, /dev/nvme0n1p2."""
    return f"{disk}{'p' if disk[-1:].isdigit() else ''}{number}"


# -- bytes ---------------------------------------------------------------------------


def _entry(partition: Partition, unique: uuid.UUID) -> bytes:
    name = partition.label.encode("utf-16-le").ljust(72, b"\0")
    return _ENTRY.pack(
        uuid.UUID(partition.type).bytes_le,
        unique.bytes_le,
        partition.start // SECTOR,
        partition.end // SECTOR - 1,
        0,
        name,
    )


def _header(
    current: int, backup: int, entries_lba: int, last_lba: int, disk: uuid.UUID, entries_crc: int
) -> bytes:
    fields = [SIGNATURE, REVISION, HEADER_SIZE, 0, 0, current, backup, 34, last_lba - 33]
    fields += [disk.bytes_le, entries_lba, ENTRIES, ENTRY_SIZE, entries_crc]
    crc = zlib.crc32(_HEADER.pack(*fields))
    fields[3] = crc
    return _HEADER.pack(*fields).ljust(SECTOR, b"\0")


def _protective_mbr(sectors: int) -> bytes:
    mbr = bytearray(SECTOR)
    entry = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, 0)
    mbr[446:462] = entry
    struct.pack_into("<I", mbr, 446 + 12, min(sectors - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


@dataclass(frozen=True)
class TableBytes:
    """What to write: ``head`` at byte 0, ``tail`` at ``tail_offset``."""

    head: bytes
    tail: bytes
    tail_offset: int


def encode(
    disk_size: int,
    partitions: Sequence[Partition],
    *,
    guid: Callable[[], uuid.UUID] = uuid.uuid4,
) -> TableBytes:
    """The protective MBR, primary and backup GPT for ``partitions`` on ``disk_size`` bytes."""
    sectors = disk_size // SECTOR
    last = sectors - 1
    entries = b"".join(_entry(p, guid()) for p in partitions).ljust(ENTRIES * ENTRY_SIZE, b"\0")
    crc = zlib.crc32(entries)
    disk = guid()
    primary = _header(1, last, 2, last, disk, crc)
    backup = _header(last, 1, last - ENTRY_SECTORS, last, disk, crc)
    head = _protective_mbr(sectors) + primary + entries
    return TableBytes(head, entries + backup, (last - ENTRY_SECTORS) * SECTOR)


def write(fd: int, disk_size: int, partitions: Sequence[Partition]) -> None:
    """Write the table onto the open disk ``fd`` (both copies) and fsync."""
    table = encode(disk_size, partitions)
    _pwrite(fd, table.head, 0)
    _pwrite(fd, table.tail, table.tail_offset)
    os.fsync(fd)


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _pread(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset)


def _parse_header(sector: bytes, lba: int) -> tuple[int, int, int, int] | None:
    """(entries LBA, count, entry size, entries CRC) of a valid header at ``lba``, else None."""
    if len(sector) < HEADER_SIZE or sector[:8] != SIGNATURE:
        return None
    fields = list(_HEADER.unpack_from(sector))
    size, crc = fields[2], fields[3]
    if size < HEADER_SIZE or size > SECTOR or fields[5] != lba:
        return None
    raw = bytearray(sector[:size])
    raw[16:20] = b"\0\0\0\0"
    if zlib.crc32(raw) != crc:
        return None
    entries_lba, count, entry_size, entries_crc = fields[10:14]
    if entry_size < ENTRY_SIZE or entry_size % 8 or count * entry_size > 1 << 20:
        return None
    return entries_lba, count, entry_size, entries_crc


def _read_table(fd: int, lba: int) -> list[Partition] | None:
    header = _parse_header(_pread(fd, SECTOR, lba * SECTOR), lba)
    if header is None:
        return None
    entries_lba, count, entry_size, crc = header
    raw = _pread(fd, count * entry_size, entries_lba * SECTOR)
    if len(raw) != count * entry_size or zlib.crc32(raw) != crc:
        return None
    found = []
    for index in range(count):
        kind, _, first, last, _, name = _ENTRY.unpack_from(raw, index * entry_size)
        if kind == bytes(16):
            continue
        label = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        type_ = str(uuid.UUID(bytes_le=kind))
        size = (last - first + 1) * SECTOR
        found.append(Partition(index + 1, label, type_, first * SECTOR, size))
    return found


def read(fd: int) -> list[Partition] | None:
    """The partitions of the GPT on the open disk ``fd``: the primary, else the backup.

    None when the disk has no valid GPT (no signature, or a CRC-32 that does
    not match in both copies).
    """
    size = os.lseek(fd, 0, os.SEEK_END)
    if size < MIN_DISK:
        return None
    found = _read_table(fd, 1)
    if found is None:
        found = _read_table(fd, size // SECTOR - 1)
    return found


def same(existing: Sequence[Partition] | None, wanted: Sequence[Partition]) -> bool:
    """Whether the disk's table already is the wanted one: same numbers, labels, places, types."""
    if existing is None:
        return False
    key = [(p.number, p.label, p.start, p.size, p.type) for p in existing]
    return key == [(p.number, p.label, p.start, p.size, p.type) for p in wanted]
