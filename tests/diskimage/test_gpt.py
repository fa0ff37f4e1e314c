"""GPT: layouts planned on a disk (fits or refused, never overlapping), written and read back."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskimage import gpt

MIB = gpt.MIB

labels = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,11}", fullmatch=True)
kinds = st.sampled_from([*gpt.TYPES, "8da63339-0007-60c0-c436-083ac8230908"])


@st.composite
def layouts(draw):
    names = draw(st.lists(labels, min_size=1, max_size=8, unique=True))
    sizes = [draw(st.integers(1, 64)) * MIB for _ in names]
    if draw(st.booleans()):
        sizes[-1] = None  # the rest of the disk
    return [gpt.Spec(n, s, draw(kinds)) for n, s in zip(names, sizes, strict=True)]


disk_sizes = st.integers(1, 600).map(lambda n: n * MIB) | st.integers(1, 600 * MIB)


@given(specs=layouts(), disk_size=disk_sizes)
@settings(max_examples=400)
def test_a_layout_fits_its_disk_without_overlap_or_is_refused_with_the_numbers(specs, disk_size):
    needed = gpt.fixed_bytes(specs)
    try:
        placed = gpt.plan(disk_size, specs)
    except gpt.LayoutError as exc:
        assert needed > disk_size
        assert f"need {needed} bytes" in str(exc) and f"has {disk_size} bytes" in str(exc)
        return
    assert needed <= disk_size
    assert [p.label for p in placed] == [s.label for s in specs]
    assert placed[0].start == gpt.FIRST
    for before, after in itertools.pairwise(placed):
        assert before.end == after.start  # contiguous, so never overlapping
    assert all(p.size > 0 and p.start % MIB == 0 and p.size % MIB == 0 for p in placed)
    assert placed[-1].end <= disk_size - gpt.TAIL  # before the backup table
    for spec, partition in zip(specs, placed, strict=True):
        assert spec.size is None or partition.size == spec.size


@given(specs=layouts(), extra=st.integers(0, 64 * MIB))
@settings(max_examples=100, deadline=None)
def test_a_written_table_reads_back_from_either_copy(tmp_path_factory, specs, extra):
    disk_size = gpt.fixed_bytes(specs) + extra // gpt.SECTOR * gpt.SECTOR
    placed = gpt.plan(disk_size, specs)
    path = tmp_path_factory.mktemp("gpt") / "disk.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, disk_size)
        gpt.write(fd, disk_size, placed)
        assert gpt.same(gpt.read(fd), placed)
        os.pwrite(fd, b"X", gpt.SECTOR + 40)  # the primary header's CRC no longer matches
        assert gpt.same(gpt.read(fd), placed)  # the backup is read
        os.pwrite(fd, b"X", disk_size - gpt.SECTOR + 40)
        assert gpt.read(fd) is None  # neither copy is valid: no table
    finally:
        os.close(fd)


def test_a_disk_without_a_table_has_none(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8 * MIB))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert gpt.read(fd) is None
    finally:
        os.close(fd)


@pytest.mark.skipif(not shutil.which("partx"), reason="needs util-linux's partx")
def test_util_linux_reads_the_table_as_written(tmp_path):
    specs = [gpt.Spec("boot", 8 * MIB, "esp"), gpt.Spec("root", 16 * MIB), gpt.Spec("home", None)]
    disk_size = 40 * MIB
    placed = gpt.plan(disk_size, specs)
    path = tmp_path / "disk.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, disk_size)
        gpt.write(fd, disk_size, placed)
    finally:
        os.close(fd)
    out = subprocess.run(
        ["partx", "--raw", "--noheadings", "-o", "NR,START,SECTORS,NAME,TYPE", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    assert rows == [
        [str(p.number), str(p.start // 512), str(p.size // 512), p.label, p.type] for p in placed
    ]
    assert placed[2].size == (40 - 1 - 8 - 16 - 1) * MIB  # the last whole MiB before the backup


def test_bad_layouts_say_what_is_wrong():
    with pytest.raises(gpt.LayoutError, match="only the last partition"):
        gpt.check_specs([gpt.Spec("a", None), gpt.Spec("b", MIB)])
    with pytest.raises(gpt.LayoutError, match="whole number of MiB"):
        gpt.check_specs([gpt.Spec("a", MIB + 1)])
    with pytest.raises(gpt.LayoutError, match="used twice"):
        gpt.check_specs([gpt.Spec("a", MIB), gpt.Spec("a", MIB)])
    with pytest.raises(gpt.LayoutError, match="not a partition type"):
        gpt.check_specs([gpt.Spec("a", MIB, "ntfs-please")])
    with pytest.raises(gpt.LayoutError, match="not a label"):
        gpt.check_specs([gpt.Spec("a b", MIB)])
    with pytest.raises(gpt.LayoutError, match="at least one"):
        gpt.check_specs([])


def test_partition_device_names_follow_linux():
    assert gpt.partition_path("/dev/sda", 2) == "/dev/sda2"
    assert gpt.partition_path("/dev/nvme0n1", 2) == "/dev/nvme0n1p2"
    assert gpt.partition_path("/dev/loop7", 1) == "/dev/loop7p1"
