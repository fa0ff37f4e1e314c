"""A resumable Android sparse upload decoded as it arrives: its file holds the raw image,
the decoder's state goes from one request to the next, a HEAD asks the running append for
a checkpoint, and a server killed mid-PATCH resumes from its last one byte for byte."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from catalogue.models import ResumableUpload, UploadState, Version
from catalogue.services.uploads import resumable_base
from catalogue.storage import get_storage
from diskimage import BLOCK
from diskimage.sparse import CHUNK_HEADER, MEDIA_TYPE, encoded
from tests.catalogue.test_resumable import create, patch, spool_files, stored
from tests.catalogue.test_resumable_live import (
    answer_of,
    new_image,
    offset_of,
    open_patch,
    request,
    secret,  # noqa: F401 - a fixture
)
from tests.catalogue.test_upload_body import start_gunicorn  # noqa: F401 - a fixture

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB


@pytest.fixture
def image(user):
    return new_image(user)


def raw_disk(data_mib: int = 3, seed: int = 1) -> bytes:
    """Data, a hole, data: whole blocks, as a sparse image needs."""
    rng = __import__("random").Random(seed)
    data = rng.randbytes(data_mib * MiB // 2)
    return data + bytes(5 * MiB) + rng.randbytes(data_mib * MiB // 2) + b"end".ljust(BLOCK)


def sparse(data: bytes) -> bytes:
    return b"".join(encoded(data))


def part_path(upload: ResumableUpload) -> Path:
    return get_storage().resumable_part(upload.image_id, upload.token).path


def test_its_file_holds_the_raw_image_decoded_so_far_and_the_decoders_state(user_client, image):
    data = raw_disk()
    wire = sparse(data)
    cut = len(wire) // 3 + 7  # inside the first RAW chunk
    created = create(user_client, image, wire[:cut], content_type=MEDIA_TYPE)
    assert created.status_code == 201, created.content
    upload = ResumableUpload.objects.get()
    assert upload.offset == cut
    held = part_path(upload).read_bytes()
    # Not the bytes as sent: the raw image, up to the map's last whole block.
    assert 0 < len(held) <= cut and held == data[: len(held)]
    assert upload.decoded["decoder"]["state"] == "chunk" or upload.decoded["decoder"]["data"]
    assert upload.decoded["written"] == len(held)
    assert upload.stored == part_path(upload).stat().st_blocks * 512
    done = patch(user_client, created["Location"], wire[cut:], cut, True)
    assert done.status_code == 201, done.content
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored(image, done.json()["version"]) == data
    assert spool_files(image) == []


def test_a_resumed_request_goes_on_from_the_state_not_from_the_file_as_sent(user_client, image):
    """The second request decodes its bytes alone: a stream whose first part the server no
    longer has as sent still completes, from the recorded state."""
    data = raw_disk()
    wire = sparse(data)
    where = create(user_client, image, b"", content_type=MEDIA_TYPE)["Location"]
    for start, end in ((0, 40), (40, len(wire) // 2), (len(wire) // 2, len(wire) - 3)):
        answer = patch(user_client, where, wire[start:end], start, False)
        assert (answer.status_code, answer["Upload-Offset"]) == (204, str(end))
        upload = ResumableUpload.objects.get()
        assert part_path(upload).stat().st_size == upload.decoded.get("written", 0)
    done = patch(user_client, where, wire[-3:], len(wire) - 3, True)
    assert done.status_code == 201, done.content
    assert stored(image, done.json()["version"]) == data


def test_bytes_written_past_the_last_checkpoint_are_cut_off(user_client, image):
    """What a crashed request wrote after its last checkpoint is not taken as the image."""
    data = raw_disk()
    wire = sparse(data)
    half = len(wire) // 2
    where = create(user_client, image, wire[:half], content_type=MEDIA_TYPE)["Location"]
    upload = ResumableUpload.objects.get()
    with open(part_path(upload), "r+b") as file:  # as a request killed after writing more
        file.seek(upload.decoded["written"] + 5 * MiB)
        file.write(b"junk" * BLOCK)
    done = patch(user_client, where, wire[half:], half, True)
    assert done.status_code == 201, done.content
    assert stored(image, done.json()["version"]) == data


def test_a_sparse_upload_whose_digest_is_checked_is_kept_as_sent(user_client, image):
    data = raw_disk()
    wire = sparse(data)
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    created = create(user_client, image, wire[:1000], content_type=MEDIA_TYPE,
                     HTTP_REPR_DIGEST=digest)  # fmt: skip
    upload = ResumableUpload.objects.get()
    assert upload.decoded is None
    assert part_path(upload).read_bytes() == wire[:1000]
    done = patch(user_client, created["Location"], wire[1000:], 1000, True)
    assert done.status_code == 201, done.content
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_corrupt_sparse_image_fails_the_upload_on_the_way_saying_why(user_client, image):
    wire = sparse(raw_disk())
    where = create(user_client, image, wire[:28], content_type=MEDIA_TYPE)["Location"]
    bad = struct.pack("<HHII", 0xDEAD, 0, 1, CHUNK_HEADER.size)
    answer = patch(user_client, where, bad + wire[40:MiB], 28, False)
    assert answer.status_code == 400, answer.content
    assert "unknown type" in answer.json()["detail"]
    gone = user_client.get(where)
    assert (gone.status_code, gone.json()["state"]) == (404, "failed")
    assert spool_files(image) == []
    assert Version.objects.filter(image=image).count() == 1


def test_past_the_quota_it_stays_resumable_from_its_last_checkpoint(user_client, user, image):
    data = raw_disk(data_mib=4)
    wire = sparse(data)
    user.storage_quota = 3 * MiB
    user.save()
    where = create(user_client, image, wire[:MiB], content_type=MEDIA_TYPE)["Location"]
    answer = patch(user_client, where, wire[MiB:], MiB, True)
    assert answer.status_code == 413, answer.content
    upload = ResumableUpload.objects.get()
    assert upload.state == UploadState.RECEIVING
    assert MiB <= upload.offset < len(wire)
    assert upload.stored == part_path(upload).stat().st_blocks * 512
    user.storage_quota = None
    user.save()
    offset = int(user_client.head(where)["Upload-Offset"])
    done = patch(user_client, where, wire[offset:], offset, True)
    assert done.status_code == 201, done.content
    assert stored(image, done.json()["version"]) == data


def test_head_during_an_append_gets_a_checkpoint_from_the_appender(
    live_server,
    user,
    secret,  # noqa: F811
    monkeypatch,
):
    """No checkpoint is due during this append: the offset HEAD reports can only come from
    the appender answering it, with the decoder's state recorded beside it."""
    monkeypatch.setattr(resumable_base, "TICK_SECONDS", 600.0)
    monkeypatch.setattr(resumable_base, "CHECKPOINT_SECONDS", 600.0)
    target = new_image(user)
    wire = sparse(raw_disk())
    status, headers, _ = request(
        live_server, secret, "POST", f"/api/image/{target.uuid}",
        **{"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0",
           "Content-Type": MEDIA_TYPE},
    )  # fmt: skip
    where = headers["Location"]
    sock = open_patch(live_server, secret, where, 0, len(wire))
    sender = Trickle(sock, wire[: 2 * MiB])
    sender.start()
    deadline = time.monotonic() + 15
    while (offset := offset_of(live_server, secret, where)) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    sender.join()
    assert 0 < offset <= 2 * MiB
    upload = ResumableUpload.objects.get()
    assert upload.offset == offset and upload.decoded["plan"]["encoding"] == "sparse"
    sock.sendall(wire[2 * MiB :])
    status, body = answer_of(sock)
    assert status == 201, body


class Trickle(threading.Thread):
    """Sends ``data`` on ``sock`` a little at a time, as a client on a slow link: the append
    goes on (and answers HEADs) while the test looks."""

    def __init__(self, sock: socket.socket, data: bytes, piece: int = 64 << 10):
        super().__init__(daemon=True)
        self.sock, self.data, self.piece = sock, data, piece
        self.stop = threading.Event()

    def run(self) -> None:
        for start in range(0, len(self.data), self.piece):
            if self.stop.is_set():
                return
            try:
                self.sock.sendall(self.data[start : start + self.piece])
            except OSError:
                return
            time.sleep(0.01)


def _worker_of(base: str) -> int:
    """The pid of the gunicorn worker serving ``base`` (a child of its master)."""
    bind = f"BAAS_BIND={base.removeprefix('http://')}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if bind not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    workers = [pid for pid, parent in found.items() if parent in found]
    assert len(workers) == 1, found
    return workers[0]


def test_a_worker_killed_mid_patch_resumes_from_its_last_checkpoint_byte_for_byte(
    start_gunicorn,  # noqa: F811
    user,
    secret,  # noqa: F811
):
    base = start_gunicorn()
    live = SimpleNamespace(url=base)
    target = new_image(user)
    data = raw_disk(data_mib=6, seed=2)
    wire = sparse(data)
    status, headers, _ = request(
        live, secret, "POST", f"/api/image/{target.uuid}",
        **{"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0",
           "Content-Type": MEDIA_TYPE, "Upload-Length": str(len(wire))},
    )  # fmt: skip
    where = headers["Location"]
    sock = open_patch(live, secret, where, 0, len(wire))
    sender = Trickle(sock, wire[: 5 * MiB + 3])
    sender.start()
    deadline = time.monotonic() + 15
    while (acknowledged := offset_of(live, secret, where)) == 0:  # a checkpoint, asked for
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sender.join()  # what follows it is decoded and written, but never acknowledged
    time.sleep(0.5)
    worker = _worker_of(base)
    os.kill(worker, signal.SIGKILL)
    sock.close()
    deadline = time.monotonic() + 30
    while True:  # the master starts another worker
        assert time.monotonic() < deadline
        try:
            offset = offset_of(live, secret, where)
            break
        except (OSError, AssertionError):
            time.sleep(0.2)
    upload = ResumableUpload.objects.get()
    assert acknowledged <= offset == upload.offset <= 5 * MiB + 3
    assert part_path(upload).stat().st_size >= upload.decoded["written"]
    for _ in range(100):  # the dead worker's lock goes with its connection
        status, headers, version = request(
            live, secret, "PATCH", where, wire[offset:],
            **{"Content-Type": "application/partial-upload", "Upload-Offset": str(offset),
               "Upload-Complete": "?1", "Upload-Draft-Interop-Version": "8"},
        )  # fmt: skip
        if status != 409:
            break
        time.sleep(0.1)
    assert status == 201, version
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored(target, version["version"]) == data
    assert spool_files(target) == []


def test_a_fast_link_records_what_its_file_takes_every_few_seconds_not_every_tick(user, image):
    """Between checkpoints an append on a fast link records the bytes its file takes only
    every RECORD_SECONDS: each record is a commit of the database, which under SQLite syncs
    its journal and waited tens of milliseconds for the upload's own data, each second."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from catalogue.services.uploads import decoded
    from catalogue.services.uploads.resumable import resumable_create

    upload = resumable_create(
        actor=user, image=image, encoding="sparse", length=None, expected_sha256=None,
        want_digest=False,
    )  # fmt: skip
    pending = resumable_base.part_of(upload).decoded(0)
    try:
        pending.write_at(os.urandom(MiB), 0)
        appending = decoded._Decoding(upload, receiver=None, pending=pending)  # type: ignore[arg-type]
        began = appending.last_tick
        updates = []
        for second in range(1, 7):  # 100 MiB a second: a fast link, no checkpoint due
            appending.position += 100 * MiB
            with CaptureQueriesContext(connection) as queries:
                appending._look(began + second + 0.01)
            if any(q["sql"].startswith("UPDATE") for q in queries.captured_queries):
                updates.append(second)
        assert updates == [int(decoded.RECORD_SECONDS)]
        upload.refresh_from_db()
        assert upload.stored == pending.allocated() >= MiB
        assert upload.offset == 0  # recorded, not acknowledged: no checkpoint came
    finally:
        pending.remove()
