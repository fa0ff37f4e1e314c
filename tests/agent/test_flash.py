"""Writing and syncing one image against the fake BAAS."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from baas_agent import compress
from baas_agent.client import Client
from baas_agent.flash import write_image
from baas_agent.instructions import (
    FlashError,
    InstructionError,
    SyncInstruction,
    WriteInstruction,
)
from baas_agent.progress import Reporter
from baas_agent.syncback import sync_image

from tests.agent.conftest import MiB, agent_client, allocated, data_extents, make_image
from tests.agent.servers import FakeBaas, sha256_file

IMAGE = "0b0e5c52-7a4e-4f57-9f4e-2f1d9c1a3b00"


def store(baas: FakeBaas, image: Path, compression: str, tmp_path: Path) -> dict:
    """Put ``image`` on the fake server as version 4; returns its write instruction."""
    raw = image.read_bytes()
    stored = tmp_path / f"stored.{compression}"
    if compression == "zstd":
        stored.write_bytes(
            subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
        )
    elif compression == "gzip":
        stored.write_bytes(gzip.compress(raw, compresslevel=1))
    else:
        stored.write_bytes(raw)
    url = f"/api/image/{IMAGE}/4"
    baas.files[url] = stored
    return {
        "image": IMAGE,
        "version": 4,
        "disk": "/dev/sda",
        "url": url,
        "size": len(raw),
        "stored_size": stored.stat().st_size,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "compression": compression,
    }


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_an_image_is_written_sparse_verified_and_reported(
    baas, image, tmp_path, disk, disks, compression
):
    instruction = store(baas, image, compression, tmp_path)
    disk.write_bytes(os.urandom(4 * MiB))  # whatever was there before
    reporter = Reporter(agent_client(baas))
    entry = write_image(
        agent_client(baas), WriteInstruction.from_json(instruction), disks, reporter
    )
    assert entry == {
        "image": IMAGE,
        "version": 4,
        "disk": "/dev/sda",
        "sha256": instruction["sha256"],
    }
    assert disk.read_bytes() == image.read_bytes()
    assert data_extents(disk) == data_extents(image)
    assert allocated(disk) <= allocated(image) + 64 * 1024
    phases = [(p["phase"], p["bytes_total"]) for p in baas.progress]
    assert phases[0] == ("writing", 16 * MiB)  # the first report of each image goes at once
    assert all(p["image"] == IMAGE and p["bytes_done"] <= p["bytes_total"] for p in baas.progress)


def test_the_zstd_command_writes_the_same_image(baas, image, tmp_path, disk, disks, monkeypatch):
    monkeypatch.setattr(compress, "use_zstandard", lambda: False)
    instruction = store(baas, image, "zstd", tmp_path)
    write_image(agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None))
    assert disk.read_bytes() == image.read_bytes()


def test_a_broken_download_resumes_and_writes_identical_bytes(baas, image, tmp_path, disk, disks):
    instruction = store(baas, image, "none", tmp_path)
    baas.cut_after = 5 * MiB + 17
    write_image(agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None))
    assert disk.read_bytes() == image.read_bytes()
    ranges = [headers.get("Range") for headers in baas.gets(instruction["url"])]
    assert ranges == [None, f"bytes={5 * MiB + 17}-"]


def test_an_image_already_on_the_disk_is_checked_and_not_downloaded(
    baas, image, tmp_path, disk, disks
):
    instruction = store(baas, image, "zstd", tmp_path)
    disk.write_bytes(image.read_bytes())
    reporter = Reporter(agent_client(baas))
    write_image(agent_client(baas), WriteInstruction.from_json(instruction), disks, reporter)
    assert baas.gets(instruction["url"]) == []
    assert [p["phase"] for p in baas.progress] == ["verifying"]


def test_a_disk_that_differs_by_one_byte_is_rewritten(baas, image, tmp_path, disk, disks):
    instruction = store(baas, image, "zstd", tmp_path)
    changed = bytearray(image.read_bytes())
    changed[9 * MiB] ^= 1
    disk.write_bytes(changed)
    write_image(agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None))
    assert len(baas.gets(instruction["url"])) == 1
    assert disk.read_bytes() == image.read_bytes()


def test_a_corrupt_download_is_never_reported_as_written(baas, image, tmp_path, disk, disks):
    instruction = store(baas, image, "zstd", tmp_path)
    instruction["sha256"] = hashlib.sha256(b"another image").hexdigest()
    with pytest.raises(FlashError, match="SHA-256 mismatch on /dev/sda after writing"):
        write_image(
            agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None)
        )


def test_a_stream_shorter_than_the_image_fails(baas, image, tmp_path, disk, disks):
    instruction = store(baas, image, "none", tmp_path)
    instruction["size"] += MiB
    with pytest.raises(Exception, match="ended at byte"):
        write_image(
            agent_client(baas), WriteInstruction.from_json(instruction), disks, Reporter(None)
        )


def test_malformed_instructions_are_refused():
    with pytest.raises(InstructionError, match="'sha256'"):
        WriteInstruction.from_json(
            {"image": "x", "version": 1, "disk": "/dev/sda", "url": "/u", "size": 1, "sha256": "z"}
        )
    with pytest.raises(InstructionError, match="compression"):
        WriteInstruction.from_json({"compression": "lz4"})
    with pytest.raises(InstructionError, match="'size'"):
        SyncInstruction.from_json({"image": "x", "disk": "/dev/sdb", "version": 1})


def test_progress_goes_at_most_once_a_second_per_image(baas):
    tenths = [1000]
    reporter = Reporter(agent_client(baas), clock=lambda: tenths[0] / 10)
    for step in range(30):  # 3 seconds in tenths, two images
        reporter("a", "writing", step, 30)
        reporter("b", "writing", step, 30)
        tenths[0] += 1
    sent = [(p["image"], p["bytes_done"]) for p in baas.progress]
    assert sent == [("a", 0), ("b", 0), ("a", 10), ("b", 10), ("a", 20), ("b", 20)]


def test_progress_failures_never_stop_a_flash():
    reporter = Reporter(Client("http://127.0.0.1:9", "t", timeout=1, sleep=lambda _: None))
    reporter("a", "writing", 1, 2)  # nothing listens: logged, not raised


# -- sync ----------------------------------------------------------------------------


def sync_instruction(baas: FakeBaas, disk: Path, sha256: str) -> dict:
    entry = {
        "image": IMAGE,
        "disk": "/dev/sda",
        "version": 3,
        "size": disk.stat().st_size,
        "sha256": sha256,
        "upload_url": f"/api/image/{IMAGE}",
    }
    baas.instructions["sync"] = [entry]
    return entry


def test_an_unchanged_disk_is_not_uploaded(baas, disk, disks):
    make_image(disk, 8 * MiB, [(MiB, 5000)])
    instruction = sync_instruction(baas, disk, sha256_file(disk))
    client = agent_client(baas)
    reporter = Reporter(client)
    assert sync_image(client, SyncInstruction.from_json(instruction), disks, reporter) is None
    assert baas.uploads == []
    assert [p["phase"] for p in baas.progress] == ["verifying"]


@pytest.mark.parametrize("in_process", [True, False], ids=["zstandard", "zstd command"])
def test_a_changed_disk_is_uploaded_compressed_with_its_digest(
    baas, disk, disks, monkeypatch, in_process
):
    monkeypatch.setattr(compress, "use_zstandard", lambda: in_process)
    make_image(disk, 24 * MiB, [(0, MiB), (7 * MiB + 3, 70_000), (24 * MiB - 10, 10)])
    instruction = sync_instruction(baas, disk, hashlib.sha256(b"as flashed").hexdigest())
    client = agent_client(baas)
    entry = sync_image(client, SyncInstruction.from_json(instruction), disks, Reporter(client))
    assert entry == {"image": IMAGE, "version": 4, "disk": "/dev/sda"}
    (upload,) = baas.uploads
    assert upload["raw"] == disk.read_bytes()
    assert upload["headers"]["Content-Encoding"] == "zstd"
    assert upload["headers"]["Content-Type"] == "application/octet-stream"
    assert upload["headers"]["Transfer-Encoding"] == "chunked"
    digest = base64.b64encode(hashlib.sha256(disk.read_bytes()).digest()).decode()
    assert upload["headers"]["Content-Digest"] == f"sha-256=:{digest}:"


def test_a_server_that_records_another_digest_fails_the_sync(baas, disk, disks, monkeypatch):
    make_image(disk, 2 * MiB, [(0, 100)])
    instruction = sync_instruction(baas, disk, hashlib.sha256(b"old").hexdigest())
    client = agent_client(baas)
    monkeypatch.setattr(
        client,
        "upload",
        lambda *a, **k: {"version": 4, "sha256": hashlib.sha256(b"x").hexdigest()},
    )
    with pytest.raises(FlashError, match="recorded SHA-256"):
        sync_image(client, SyncInstruction.from_json(instruction), disks, Reporter(None))


def test_a_server_refusing_chunked_bodies_gets_the_disk_raw_with_its_length(baas, disk, disks):
    baas.refuse_chunked = True
    make_image(disk, 3 * MiB, [(MiB, 777)])
    instruction = sync_instruction(baas, disk, hashlib.sha256(b"old").hexdigest())
    client = agent_client(baas)
    entry = sync_image(client, SyncInstruction.from_json(instruction), disks, Reporter(None))
    assert entry == {"image": IMAGE, "version": 4, "disk": "/dev/sda"}
    (upload,) = baas.uploads
    assert upload["raw"] == disk.read_bytes()
    assert upload["headers"]["Content-Length"] == str(3 * MiB)
    assert "Content-Encoding" not in upload["headers"]
