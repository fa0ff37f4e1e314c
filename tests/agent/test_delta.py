"""Delta re-flash against the fake BAAS: random change sets, tampered disks, bad deltas.

The server side of a delta (the two maps compared, the ranges' places in the
data stream) is built here as the server builds it — ``diskimage.delta`` and
one zstd frame per range — and served with single byte ranges; the agent's
``write_image`` must leave the disk holding the new version byte for byte,
having downloaded only the changed ranges, or flash it in full and say why.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import time
from pathlib import Path

import pytest
import zstandard
from baas_agent import delta as delta_module
from baas_agent.delta import DeltaError, DeltaInstruction
from baas_agent.disks import DiskMap, Zeroer
from baas_agent.flash import write_image
from baas_agent.instructions import WriteInstruction
from baas_agent.progress import Reporter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskimage.datamap import DataMap, DataMapper
from diskimage.delta import map_delta, spans, subtract
from tests.agent.conftest import agent_client
from tests.agent.servers import FakeBaas
from tests.diskimage.pagecache import resident

IMAGE = "0b0e5c52-7a4e-4f57-9f4e-2f1d9c1a3b00"
BLOCK = 4096
BLOCKS = 96  # 384 KiB disks: small enough for many examples

# A block is 0 (zeros) or a seed of its bytes; a change set maps blocks to new values.
blocks = st.lists(st.integers(0, 3), min_size=BLOCKS, max_size=BLOCKS)
changes = st.dictionaries(st.integers(0, BLOCKS - 1), st.integers(0, 7), max_size=20)


def content(values: list[int], salt: bytes) -> bytes:
    return b"".join(
        hashlib.sha256(salt + bytes([v, i % 256, i // 256])).digest() * (BLOCK // 32)
        if v
        else bytes(BLOCK)
        for i, v in enumerate(values)
    )


def mapped(raw: bytes) -> DataMap:
    mapper = DataMapper()
    mapper.update(raw)
    return mapper.finish(hashlib.sha256(raw).hexdigest())


def lay(path: Path, raw: bytes) -> None:
    """``raw`` on a file disk as a flash leaves it: data written, zeros as holes."""
    with path.open("wb") as disk:
        disk.truncate(len(raw))
        for start, end, _ in mapped(raw).ranges:
            disk.seek(start)
            disk.write(raw[start:end])


def serve(baas: FakeBaas, tmp_path: Path, base: bytes, new: bytes, encoding: str) -> dict:
    """The new version on the fake server, and its write instruction with a delta from ``base``."""
    new_map, base_map = mapped(new), mapped(base)
    frames = [
        zstandard.ZstdCompressor().compress(new[s:e]) if encoding == "zstd" else new[s:e]
        for s, e, _ in new_map.ranges
    ]
    stream = tmp_path / ("data.zst" if encoding == "zstd" else "data.raw")
    stream.write_bytes(b"".join(frames))
    (tmp_path / "map.json").write_bytes(new_map.dumps())
    baas.files[f"/api/image/{IMAGE}/5/data"] = stream
    baas.files[f"/api/image/{IMAGE}/5/map"] = tmp_path / "map.json"
    offsets = [sum(len(f) for f in frames[:i]) for i in range(len(frames))]
    baas.pieces[f"/api/image/{IMAGE}/5/data"] = list(zip(offsets, map(len, frames), strict=True))
    delta = map_delta(base_map, new_map)
    return {
        "image": IMAGE,
        "version": 5,
        "disk": "/dev/sda",
        "url": f"/api/image/{IMAGE}/5",  # not there: a full flash would use the data stream
        "size": len(new),
        "stored_size": len(new),
        "sha256": new_map.sha256,
        "compression": "none",
        "map_url": f"/api/image/{IMAGE}/5/map",
        "data_url": f"/api/image/{IMAGE}/5/data",
        "delta": {
            "image": IMAGE,
            "version": 4,
            "sha256": base_map.sha256,
            "ranges": [[i, offsets[i], len(frames[i])] for i in delta.changed],
            "zeros": [list(run) for run in delta.zeros],
        },
    }


def flash(baas: FakeBaas, disk: Path, instruction: dict) -> None:
    write_image(
        agent_client(baas),
        WriteInstruction.from_json(instruction),
        DiskMap({"/dev/sda": str(disk)}),
        Reporter(None),
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(base_blocks=blocks, changed=changes, encoding=st.sampled_from(["zstd", "none"]))
def test_after_a_delta_the_disk_is_the_new_version_byte_for_byte(
    tmp_path, base_blocks, changed, encoding, caplog
):
    new_blocks = list(base_blocks)
    for index, value in changed.items():
        new_blocks[index] = value
    base, new = content(base_blocks, b"a"), content(new_blocks, b"a")
    with FakeBaas().start() as baas:
        instruction = serve(baas, tmp_path, base, new, encoding)
        disk = tmp_path / "sda.img"
        lay(disk, base)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            flash(baas, disk, instruction)
        data_file = baas.files[instruction["data_url"]]
        wanted = sum(length for _, _, length in instruction["delta"]["ranges"])
        served = baas.served.get(instruction["data_url"], 0)
    assert disk.read_bytes() == new
    assert "writing it in full" not in caplog.text
    assert served == wanted  # the changed ranges' frames, nothing else
    assert wanted <= data_file.stat().st_size
    # Zeros are holes: nothing the new version does not hold is allocated.
    assert disk.stat().st_blocks * 512 <= mapped(new).data_bytes + 8 * BLOCK


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(base_blocks=blocks, changed=changes, where=st.integers(0, BLOCKS * BLOCK - 1))
def test_a_disk_that_does_not_hold_the_base_is_flashed_in_full(
    tmp_path, base_blocks, changed, where, caplog
):
    new_blocks = list(base_blocks)
    for index, value in changed.items():
        new_blocks[index] = value
    base, new = content(base_blocks, b"b"), content(new_blocks, b"b")
    new_map = mapped(new)
    delta = map_delta(mapped(base), new_map)
    kept = [(s, e) for i, (s, e, _) in enumerate(new_map.ranges) if i not in delta.changed]
    kept += subtract(list(new_map.gaps()), delta.zeros)
    if not any(s <= where < e for s, e in kept):
        where = kept[0][0] if kept else 0
    with FakeBaas().start() as baas:
        instruction = serve(baas, tmp_path, base, new, "zstd")
        disk = tmp_path / "sda.img"
        tampered = bytearray(base)
        tampered[where] ^= 0x5A
        lay(disk, bytes(tampered))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            flash(baas, disk, instruction)
    assert disk.read_bytes() == new
    if base != new and kept:
        assert "does not hold v4 of image" in caplog.text
        assert "writing it in full" in caplog.text


def test_a_delta_whose_zeros_would_erase_data_is_refused_and_the_disk_flashed_in_full(
    baas, tmp_path, caplog
):
    base = content([1] * 8 + [0] * 8, b"c")
    new = content([1] * 4 + [2] * 4 + [0] * 8, b"c")
    instruction = serve(baas, tmp_path, base, new, "zstd")
    instruction["delta"]["zeros"] = [[0, BLOCK]]  # data of the new version
    disk = tmp_path / "sda.img"
    lay(disk, base)
    with caplog.at_level(logging.INFO):
        flash(baas, disk, instruction)
    assert disk.read_bytes() == new
    assert "bytes 0-4096 hold data in the new version" in caplog.text


@pytest.mark.parametrize(
    "delta",
    [
        "not an object",
        {"image": IMAGE, "version": 4, "sha256": "x", "ranges": [], "zeros": []},
        {"image": IMAGE, "version": -1, "sha256": "0" * 64, "ranges": [], "zeros": []},
        {"image": IMAGE, "version": 4, "sha256": "0" * 64, "ranges": [[1, 2]], "zeros": []},
        {"image": IMAGE, "version": 4, "sha256": "0" * 64, "ranges": [], "zeros": [[5, True]]},
    ],
)
def test_a_malformed_delta_is_ignored_and_the_write_is_whole(delta, caplog):
    with caplog.at_level(logging.WARNING):
        instruction = WriteInstruction.from_json(
            {
                "image": IMAGE,
                "version": 5,
                "disk": "/dev/sda",
                "url": "/x",
                "size": 4096,
                "sha256": "0" * 64,
                "delta": delta,
            }
        )
    assert instruction.delta is None
    assert "its delta is unusable" in caplog.text


def test_subtract_and_spans_merge_what_touches():
    assert subtract([(0, 10), (20, 30)], [(2, 4), (9, 21), (25, 26)]) == [
        (0, 2),
        (4, 9),
        (21, 25),
        (26, 30),
    ]
    assert subtract([(0, 10)], []) == [(0, 10)]
    assert spans([(0, 5), (5, 3), (10, 1), (11, 1)]) == [(0, 8), (10, 2)]


def read_bytes() -> int:
    """Bytes this process has had read from storage, not from the page cache (/proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no read_bytes in /proc/self/io")


def test_what_was_written_is_read_back_from_the_disk_not_from_memory(baas, tmp_path):
    """The read-back of a write must read the medium: /proc/self/io counts the bytes
    the kernel fetched from storage for this process, which is ~0 when a read is
    answered from the page cache (where every byte just written still is)."""
    if os.major(os.stat(tmp_path).st_dev) == 0:
        pytest.skip("the temporary directory is not on a block device (tmpfs)")
    base = content([1] * 32 + [0] * 32 + [2] * 32, b"d")
    new = content([3] * 32 + [0] * 32 + [2] * 32, b"d")
    instruction = serve(baas, tmp_path, base, new, "zstd")
    disk = tmp_path / "sda.img"
    lay(disk, base)
    Path(baas.files[instruction["data_url"]]).read_bytes()  # the server's reads come from memory
    before = read_bytes()
    flash(baas, disk, instruction)
    fetched = read_bytes() - before
    assert disk.read_bytes() == new
    written = 32 * BLOCK
    # The kept range (32 blocks, BLAKE3) and the written one (SHA-256) both came from disk.
    assert fetched >= written, f"only {fetched} bytes read from the disk, {written} written"
    os.posix_fadvise(fd := os.open(disk, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


@pytest.mark.parametrize("punch", [True, False], ids=["holes punched", "zeros written"])
def test_nothing_the_agent_wrote_and_verified_stays_in_the_page_cache(
    baas, tmp_path, punch, monkeypatch
):
    """What the delta wrote (a range) and zeroed (a run that held data) is not cached once
    verified; what the check of the kept data read may be (dropping it would cost as much
    as reading it, and the check reads what is on the disk either way). Without hole
    punching (a device that has neither it nor BLKZEROOUT) the zeros are written."""
    if not punch:

        def unsupported(self, offset: int, length: int) -> None:
            raise OSError(errno.EOPNOTSUPP, "no hole punching here")

        monkeypatch.setattr(Zeroer, "_punch_hole", unsupported)
    base = content([1] * 32 + [0] * 32 + [2] * 16 + [4] * 16, b"e")
    new = content([3] * 32 + [0] * 32 + [2] * 16 + [0] * 16, b"e")
    instruction = serve(baas, tmp_path, base, new, "zstd")
    assert instruction["delta"]["zeros"] == [[80 * BLOCK, 96 * BLOCK]]
    disk = tmp_path / "sda.img"
    lay(disk, base)
    fd = os.open(disk, os.O_RDWR)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.pwrite(fd, base[80 * BLOCK :], 80 * BLOCK)  # the run to zero is cached, and dirty
    os.close(fd)
    assert resident(disk, 0, 32 * BLOCK) == 0
    flash(baas, disk, instruction)
    if os.major(os.stat(tmp_path).st_dev) != 0:  # tmpfs keeps its pages: they are the file
        assert resident(disk, 0, 32 * BLOCK) == 0, "the written range stayed cached"
        assert resident(disk, 80 * BLOCK, 96 * BLOCK) == 0, "the zeroed run stayed cached"
    assert disk.read_bytes() == new


def test_a_disk_changed_behind_the_device_cache_is_seen_and_rewritten(
    baas, tmp_path, loop_device, request
):
    """A loop device's medium is its backing file: written there with O_DIRECT, a change
    bypasses the loop device's page cache. If the agent left the pages it wrote and read
    back in that cache, its next check would see the old bytes and skip the rewrite."""
    device, backing = loop_device
    size = 16 << 20
    raw = content(([1, 0, 2, 0] * (size // BLOCK // 4)), b"f")
    instruction = serve(baas, tmp_path, raw, raw, "zstd")
    del instruction["delta"]  # a plain flash, then the same again
    baas.files.pop(instruction["url"], None)
    # Held open, as a mounted file system or a udev probe would: the last close of a
    # block device drops its cache, which would hide a cache left behind.
    holder = os.open(device, os.O_RDONLY)
    request.addfinalizer(lambda: os.close(holder))
    flash(baas, device, instruction)
    damaged = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    damaged.write(os.urandom(BLOCK))
    fd = os.open(backing, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwrite(fd, damaged, 0)  # block 0 holds data in the image
    finally:
        os.close(fd)
    served = dict(baas.served)
    flash(baas, device, instruction)
    assert baas.served != served, "the agent took the damaged disk for the image"
    with backing.open("rb") as file:
        assert file.read(size) == raw


def test_a_long_list_of_changed_ranges_goes_in_several_requests_under_the_limit():
    changed = [[i, i * 100, 10] for i in range(0, 4000, 2)]  # nothing consecutive: 2000 items
    delta = DeltaInstruction.from_json(
        {"image": IMAGE, "version": 4, "sha256": "0" * 64, "ranges": changed, "zeros": []}
    )
    selections = delta.selections(limit=500)
    assert len(selections) > 1
    assert all(len(spec) <= 500 for spec, _ in selections)
    named = [int(i) for spec, _ in selections for i in spec.split(",")]
    assert named == [i for i, _, _ in changed]
    assert sum(size for _, size in selections) == 10 * len(changed)
    runs = DeltaInstruction.from_json(
        {"image": IMAGE, "version": 4, "sha256": "0" * 64, "zeros": [],
         "ranges": [[1, 0, 5], [2, 5, 5], [3, 10, 5], [7, 15, 1]]}
    )  # fmt: skip
    assert runs.selections() == [("1-3,7", 16)]


PARTED = mapped(os.urandom(8 * BLOCK) + bytes(4 * BLOCK) + os.urandom(4 * BLOCK))


@pytest.mark.parametrize(
    ("parts", "why"),
    [
        ([[0, 0, BLOCK, "a" * 64], [0, BLOCK, 2 * BLOCK]], "is \\[index, start, end"),
        ([[2, 0, BLOCK, "a" * 64]], "not a range that changes by parts"),
        ([[1, 12 * BLOCK, 13 * BLOCK, "a" * 64]], "not a range that changes by parts"),  # whole
        ([[0, 100, BLOCK, "a" * 64]], "not blocks of the range"),
        ([[0, 0, 9 * BLOCK, "a" * 64]], "not blocks of the range"),
        ([[0, 4 * BLOCK, 5 * BLOCK, "a" * 64], [0, 0, BLOCK, "a" * 64]], "out of order"),
        ([[0, 0, 2 * BLOCK, "a" * 64], [0, BLOCK, 3 * BLOCK, "a" * 64]], "out of order"),
        ([[0, 0, BLOCK, "short"]], "no digest"),
    ],
)
def test_parts_that_do_not_fit_the_map_make_the_delta_unusable(parts, why):
    data = {
        "image": IMAGE,
        "version": 1,
        "sha256": "0" * 64,
        "ranges": [[1, 0, 100]],
        "zeros": [],
        "parts": parts,
    }
    with pytest.raises(DeltaError, match=why):
        DeltaInstruction.from_json(data).delta(PARTED)


def asked_for_data(baas: FakeBaas, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not baas.selections and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(baas.selections)


def test_the_changed_ranges_download_while_the_kept_data_is_checked(
    baas, tmp_path, monkeypatch, caplog
):
    """The check of what the delta keeps waits here until the server was asked for the
    changed ranges: an agent that downloads them only after the check never gets there."""
    base = content([1] * 32 + [0] * 32 + [2] * 32, b"g")
    new = content([3] * 32 + [0] * 32 + [2] * 32, b"g")
    instruction = serve(baas, tmp_path, base, new, "zstd")
    disk = tmp_path / "sda.img"
    lay(disk, base)
    check = delta_module.kept_mismatch
    during: list[bool] = []

    def slow_check(*args, **kwargs):
        during.append(asked_for_data(baas))
        return check(*args, **kwargs)

    monkeypatch.setattr(delta_module, "kept_mismatch", slow_check)
    with caplog.at_level(logging.INFO):
        flash(baas, disk, instruction)
    assert during == [True], "the changed ranges were not asked for during the check"
    assert disk.read_bytes() == new
    assert "delta from v4" in caplog.text and "written and verified" in caplog.text


def test_a_delta_downloaded_ahead_writes_nothing_on_a_disk_that_fails_the_check(
    baas, tmp_path, monkeypatch
):
    base = content([1] * 32 + [0] * 32 + [2] * 32, b"h")
    new = content([3] * 32 + [0] * 32 + [2] * 32, b"h")
    instruction = serve(baas, tmp_path, base, new, "zstd")
    disk = tmp_path / "sda.img"
    tampered = bytearray(base)
    tampered[80 * BLOCK] ^= 1  # in the range the delta keeps
    lay(disk, bytes(tampered))
    check = delta_module.kept_mismatch

    def slow_check(*args, **kwargs):
        assert asked_for_data(baas)
        time.sleep(0.2)  # the download had time to arrive
        return check(*args, **kwargs)

    monkeypatch.setattr(delta_module, "kept_mismatch", slow_check)
    parsed = WriteInstruction.from_json(instruction)
    assert parsed.delta is not None
    why = delta_module.write_delta(
        agent_client(baas),
        instruction["data_url"],
        disk,
        mapped(new),
        parsed.delta,
        label="test",
        writing=lambda _: None,
        verifying=lambda _: None,
    )
    assert why is not None and "does not hold v4" in why
    assert disk.read_bytes() == bytes(tampered), "the delta wrote before its check passed"


@pytest.mark.parametrize("inline", ["usable", "of other bytes"])
def test_the_instructions_data_map_saves_asking_for_it(baas, tmp_path, inline, caplog):
    """An unchanged disk is checked against the map the instruction carries, without a
    call; a map there that does not fit the instruction is set aside and asked for."""
    raw = content([1] * 16 + [0] * 16 + [2] * 16, b"i")
    instruction = serve(baas, tmp_path, raw, raw, "zstd")
    del instruction["delta"]
    instruction["map"] = mapped(raw).as_json()
    if inline != "usable":
        instruction["map"]["size"] += BLOCK
    disk = tmp_path / "sda.img"
    lay(disk, raw)
    with caplog.at_level(logging.INFO):
        flash(baas, disk, instruction)
    assert "already there (checked)" in caplog.text
    asked = len(baas.gets(instruction["map_url"]))
    assert asked == (0 if inline == "usable" else 1)
    assert not baas.gets(instruction["data_url"]) and not baas.selections
