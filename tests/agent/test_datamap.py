"""The agent's data maps: checking a disk against one, and flashing with it.

The maps are made by the server's own builder (``diskimage.datamap``, which
imports nothing from Django), so both ends agree on the format.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from baas_agent import flash as flash_module
from baas_agent.disks import DiskError, DiskMap, RangeWriter
from baas_agent.flash import write_image
from baas_agent.instructions import FlashError, SyncInstruction, WriteInstruction
from baas_agent.landing import land
from baas_agent.progress import Reporter
from baas_agent.syncback import sync_image

from diskimage.datamap import DataMapper
from diskimage.seekable import FramedZstdEncoder, data_frames, read_seek_table
from diskimage.verify import mismatch
from tests.agent.conftest import MiB, agent_client
from tests.agent.servers import FakeBaas
from tests.diskimage.layouts import map_of, parsed

IMAGE = "5d1c3e9a-0b4f-4c2e-8f0a-6b7d9e1f2a3c"
URL = f"/api/image/{IMAGE}/4"


def serve(baas: FakeBaas, image: Path, tmp_path: Path, *, stored: Path | None = None) -> dict:
    """Version 4 on the fake server, zstd, with its map; returns the write instruction."""
    source = stored or image
    packed = tmp_path / "stored.zst"
    packed.write_bytes(
        subprocess.run(
            ["zstd", "-q", "-c"], input=source.read_bytes(), capture_output=True, check=True
        ).stdout
    )
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(map_of(image)))
    baas.files[URL] = packed
    baas.files[f"{URL}/map"] = map_file
    return {
        "image": IMAGE,
        "version": 4,
        "disk": "/dev/sda",
        "url": URL,
        "map_url": f"{URL}/map",
        "size": image.stat().st_size,
        "stored_size": packed.stat().st_size,
        "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
        "compression": "zstd",
    }


def flash(baas: FakeBaas, instruction: dict, disks: DiskMap) -> dict:
    return write_image(
        agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None)
    )


# --- Checking a disk against a map -----------------------------------------------------------


# --- Flashing with a map -------------------------------------------------------------------


def test_with_a_map_an_image_is_written_and_verified(baas, image, tmp_path, disk, disks):
    instruction = serve(baas, image, tmp_path)
    disk.write_bytes(os.urandom(2 * MiB))
    client = agent_client(baas)
    write_image(client, WriteInstruction.from_json(instruction), disks, Reporter(client))
    assert disk.read_bytes() == image.read_bytes()
    assert len(baas.gets(f"{URL}/map")) == 1
    assert baas.progress[0]["phase"] == "writing"


def test_with_a_map_an_image_already_there_is_not_downloaded(baas, image, tmp_path, disk, disks):
    instruction = serve(baas, image, tmp_path)
    disk.write_bytes(image.read_bytes())
    flash(baas, instruction, disks)
    assert baas.gets(URL) == []


@pytest.mark.parametrize("where", [9 * MiB + 7, 12 * MiB], ids=["in data", "in zeros"])
def test_a_download_that_differs_from_its_map_is_never_reported_written(
    baas, image, tmp_path, disk, disks, where
):
    other = tmp_path / "other.img"
    changed = bytearray(image.read_bytes())
    changed[where] ^= 0x5A
    other.write_bytes(changed)
    instruction = serve(baas, image, tmp_path, stored=other)
    with pytest.raises(FlashError, match="mismatch on /dev/sda after writing"):
        write_image(
            agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None)
        )


def test_without_a_map_the_whole_image_is_hashed(baas, image, tmp_path, disk, disks):
    instruction = serve(baas, image, tmp_path)
    del baas.files[f"{URL}/map"]  # the server answers 404: not built yet
    flash(baas, instruction, disks)
    assert disk.read_bytes() == image.read_bytes()
    assert len(baas.gets(f"{URL}/map")) == 1


def sync_entry(baas: FakeBaas, flashed: Path, tmp_path: Path) -> dict:
    instruction = serve(baas, flashed, tmp_path)
    entry = {
        key: instruction[key] for key in ("image", "disk", "version", "size", "sha256", "map_url")
    }
    entry["upload_url"] = f"/api/image/{IMAGE}"
    baas.instructions["sync"] = [entry]
    return entry


def test_an_unchanged_disk_is_recognised_by_its_map(baas, image, tmp_path, disk, disks):
    entry = sync_entry(baas, image, tmp_path)
    disk.write_bytes(image.read_bytes())
    client = agent_client(baas)
    assert sync_image(client, SyncInstruction.from_json(entry), disks, Reporter(None)) is None
    assert baas.uploads == []


def test_a_disk_changed_in_its_zeros_is_uploaded(baas, image, tmp_path, disk, disks):
    entry = sync_entry(baas, image, tmp_path)
    disk.write_bytes(image.read_bytes())
    with disk.open("r+b") as file:
        file.seek(13 * MiB)
        file.write(b"results")
    client = agent_client(baas)
    synced = sync_image(client, SyncInstruction.from_json(entry), disks, Reporter(None))
    assert synced == {"image": IMAGE, "version": 5, "disk": entry["disk"]}
    (upload,) = baas.uploads
    assert upload["raw"] == disk.read_bytes()


# --- The data stream: only the ranges travel ---------------------------------------------


def serve_data(baas: FakeBaas, instruction: dict, image: Path, tmp_path: Path, *, zstd: bool):
    """The data stream of ``image`` as the server makes it: its data frames, or raw ranges."""
    raw = image.read_bytes()
    mapped = map_of(image)
    datamap = DataMapper()
    datamap.update(raw)
    datamap = datamap.finish(mapped["sha256"])
    if zstd:
        framed = tmp_path / "framed.zst"
        encoder = FramedZstdEncoder(datamap, 3)
        framed.write_bytes(encoder.compress(raw) + encoder.flush())
        with framed.open("rb") as file:
            frames = data_frames(read_seek_table(file.fileno()), datamap)
            stream = b"".join(os.pread(file.fileno(), f.length, f.offset) for f in frames)
        path = tmp_path / "data.zst"
    else:
        stream = b"".join(raw[start:end] for start, end, _ in datamap.ranges)
        path = tmp_path / "data.raw"
    path.write_bytes(stream)
    baas.files[f"{URL}/data"] = path
    instruction["data_url"] = f"{URL}/data"
    return path


@pytest.fixture(params=["parallel", "in order"])
def landing(request, monkeypatch):
    """Both ways to write a data stream: ranges landed on a pool, or decompressed in order
    (an agent without the zstandard module)."""
    if request.param == "in order":
        monkeypatch.setattr(flash_module, "can_land", lambda encoding: False)
    return request.param


@pytest.mark.parametrize("zstd", [True, False], ids=["zstd frames", "raw ranges"])
def test_only_the_data_travels_and_is_verified(baas, image, tmp_path, disk, disks, zstd, landing):
    instruction = serve(baas, image, tmp_path)
    stream = serve_data(baas, instruction, image, tmp_path, zstd=zstd)
    disk.write_bytes(os.urandom(3 * MiB))
    client = agent_client(baas)
    write_image(client, WriteInstruction.from_json(instruction), disks, Reporter(client))
    assert disk.read_bytes() == image.read_bytes()
    assert baas.gets(URL) == []  # the whole file was never asked for
    assert len(baas.gets(f"{URL}/data")) == 1
    assert stream.stat().st_size < 6 * MiB  # 16 MiB image, its data alone


def test_a_broken_data_stream_resumes(baas, image, tmp_path, disk, disks, landing):
    instruction = serve(baas, image, tmp_path)
    serve_data(baas, instruction, image, tmp_path, zstd=True)
    baas.cut_after, baas.cut_path = 100_000, f"{URL}/data"
    flash(baas, instruction, disks)
    assert disk.read_bytes() == image.read_bytes()
    ranges = [headers.get("Range") for headers in baas.gets(f"{URL}/data")]
    assert ranges == [None, "bytes=100000-"]


def test_a_data_stream_of_other_bytes_is_never_reported_written(
    baas, image, tmp_path, disk, disks, landing
):
    instruction = serve(baas, image, tmp_path)
    stream = serve_data(baas, instruction, image, tmp_path, zstd=False)
    changed = bytearray(stream.read_bytes())
    changed[MiB] ^= 1
    stream.write_bytes(changed)
    with pytest.raises(FlashError, match="differ from the image"):
        write_image(
            agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None)
        )


def test_a_data_stream_shorter_than_the_map_fails(baas, image, tmp_path, disk, disks, landing):
    instruction = serve(baas, image, tmp_path)
    stream = serve_data(baas, instruction, image, tmp_path, zstd=False)
    stream.write_bytes(stream.read_bytes()[:-10])
    with pytest.raises(DiskError, match="ended"):
        write_image(
            agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None)
        )


def test_without_a_data_stream_the_whole_file_is_downloaded(baas, image, tmp_path, disk, disks):
    instruction = serve(baas, image, tmp_path)
    instruction["data_url"] = f"{URL}/data"  # the server answers 404: stored gzip, say
    flash(baas, instruction, disks)
    assert disk.read_bytes() == image.read_bytes()
    assert len(baas.gets(URL)) == 1


def test_on_a_block_device_the_gaps_are_zeroed(image, tmp_path):
    target = tmp_path / "device.img"
    target.write_bytes(b"\xff" * image.stat().st_size)  # old contents everywhere
    raw = image.read_bytes()
    ranges = [(start, end) for start, end, _ in parsed(image).ranges]
    done: list[int] = []
    writer = RangeWriter(target, len(raw), ranges, block_device=True, on_range=done.append)
    with writer:
        for start, end in ranges:
            writer.write(raw[start:end])
        writer.close()
    assert target.read_bytes() == raw
    assert done == list(range(len(ranges)))


@pytest.mark.root
@pytest.mark.parametrize("zstd", [True, False], ids=["zstd frames", "raw ranges"])
def test_a_data_stream_lands_on_a_real_block_device(image, tmp_path, loop_device, zstd):
    device, backing = loop_device  # 16 MiB of random bytes: the gaps must become zeros
    datamap = parsed(image)
    stream = serve_data(FakeBaas(), {}, image, tmp_path, zstd=zstd).read_bytes()
    chunks = [stream[i : i + 65_537] for i in range(0, len(stream), 65_537)]
    assert land(chunks, "zstd" if zstd else "none", device, datamap, workers=2) is None
    assert backing.read_bytes() == image.read_bytes()
    assert mismatch(device, datamap, sparse=False) is None


# --- The fast check: BLAKE3 for "is it still there?" -------------------------------------


def test_a_disk_is_only_left_alone_when_its_blake3_matches(baas, image, tmp_path, disk, disks):
    instruction = serve(baas, image, tmp_path)
    served = json.loads(baas.files[f"{URL}/map"].read_text())
    served["blake3"][0] = "0" * 64  # the disk holds the image, but the fast check says no
    baas.files[f"{URL}/map"].write_text(json.dumps(served))
    disk.write_bytes(image.read_bytes())
    flash(baas, instruction, disks)  # rewritten, then verified by SHA-256: it passes
    assert len(baas.gets(URL)) == 1
    assert disk.read_bytes() == image.read_bytes()


@pytest.mark.parametrize("direction", ["write", "sync"])
def test_the_start_of_each_image_reaches_the_server_even_when_a_report_is_lost(
    baas, image, tmp_path, disk, disks, direction
):
    # The server records an image as written or brought back only if it saw progress for
    # it; routine reports are best effort, so the first one is sent again until it lands.
    baas.progress_failures = 1
    disk.write_bytes(image.read_bytes())  # already there: checked quickly, not rewritten
    client = agent_client(baas)
    client.sleep = lambda seconds: None
    if direction == "write":
        instruction = serve(baas, image, tmp_path)
        write_image(client, WriteInstruction.from_json(instruction), disks, Reporter(client))
    else:
        entry = sync_entry(baas, image, tmp_path)
        assert sync_image(client, SyncInstruction.from_json(entry), disks, Reporter(client)) is None
    assert [(p["image"], p["phase"]) for p in baas.progress][:1] == [(IMAGE, "verifying")]
    assert baas.gets(URL) == []  # checked, not downloaded
