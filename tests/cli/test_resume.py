"""Transfers that are cut (SIGKILL of the client) and resumed by the next run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import pytest
from baas_cli import bodies
from baas_cli.config import Profile
from baas_cli.push import Push, PushOptions, Report
from baas_cli.wire import Sender, piece_length

from catalogue.models import Image, ResumableUpload
from tests.cli.conftest import MiB, random_bytes, sparse_disk

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
DATA = 24 * MiB


def _disk(tmp_path, seed=1):
    pieces = [(MiB, random_bytes(DATA // 2, seed)), (40 * MiB, random_bytes(DATA // 2, seed + 1))]
    return sparse_disk(tmp_path / "disk.img", 64 * MiB, pieces)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    pytest.fail(f"still waiting for {what}")


def _upload():
    return ResumableUpload.objects.filter(state="receiving").first()


def _kill_push_at_half(baas, disk) -> tuple[ResumableUpload, int]:
    """Start a slow push, SIGKILL it once the server holds half the body; the server's offset."""
    process = baas.popen("image", "push", "disk", str(disk), "--limit-rate", "6M")
    try:
        upload = _wait(_upload, "the upload resource")
        length = upload.length
        assert length and length > DATA

        def half() -> bool:
            upload.refresh_from_db()
            return upload.offset >= length // 2

        _wait(half, "half of the upload")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    assert upload.offset < length, "the push ended before it was cut"

    def settled() -> bool:  # the server notices the cut when its socket closes
        before = upload.offset
        time.sleep(0.5)
        upload.refresh_from_db()
        return upload.offset == before

    _wait(settled, "the server to store what arrived")
    return upload, length


def test_a_push_killed_at_half_resumes_without_resending_what_arrived(
    baas_ada, celery_worker, tmp_path
):
    disk = _disk(tmp_path)
    baas_ada("image", "create", "disk")
    upload, length = _kill_push_at_half(baas_ada, disk)
    held = upload.offset
    assert length // 2 <= held < length
    pushed = baas_ada.json("image", "push", "disk", str(disk))
    transfer = pushed["transfer"]
    assert transfer["resumable"] is True
    assert transfer["resumed_from"] == held
    assert transfer["sent"] == length - held  # what arrived was not sent again
    assert transfer["body_length"] == length
    version = Image.objects.get(name="disk").versions.get(number=1)
    target = tmp_path / "back.img"
    baas_ada("image", "pull", "disk", str(target))
    assert _sha256(target) == _sha256(disk) and version.size == disk.stat().st_size
    assert not list((baas_ada.home / "state" / "baas" / "push").glob("*.json"))


def test_a_file_changed_between_attempts_starts_over_saying_so(baas_ada, celery_worker, tmp_path):
    disk = _disk(tmp_path)
    baas_ada("image", "create", "disk")
    upload, _length = _kill_push_at_half(baas_ada, disk)
    with disk.open("r+b") as file:  # a change in place: the size stays, the mtime moves
        file.seek(MiB)
        file.write(b"changed")
    os.utime(disk, ns=(time.time_ns(), time.time_ns() + 10**9))
    result = baas_ada("image", "push", "disk", str(disk), "--json")
    assert "changed since the last attempt" in result.stderr
    transfer = json.loads(result.stdout)["transfer"]
    assert transfer["resumed_from"] == 0 and transfer["sent"] == transfer["body_length"]
    assert not ResumableUpload.objects.filter(pk=upload.pk, state="receiving").exists()
    target = tmp_path / "back.img"
    baas_ada("image", "pull", "disk", str(target))
    assert _sha256(target) == _sha256(disk)


def test_an_offset_the_server_does_not_hold_continues_from_the_servers(
    baas_ada, ada, celery_worker, tmp_path
):
    """The server's 409 names its offset: the client goes on from there."""
    disk = _disk(tmp_path)
    image = Image.objects.create(name="disk", owner=ada, type="single")
    profile = Profile(name="t", url=baas_ada.url, token=baas_ada.token())
    said: list[str] = []
    report = Report(say=said.append, on_sent=lambda n: None, set_total=lambda n: None)
    push = Push(_Api(profile), {"uuid": str(image.uuid)}, disk, PushOptions(), report)
    layout = bodies.Layout.of(os.open(disk, os.O_RDONLY))
    pieces = bodies.sparse_pieces(layout)
    sender = Sender(profile.url, profile.token)
    created = sender.request(
        "POST",
        f"/api/image/{image.uuid}",
        {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0",
         "Content-Type": "application/vnd.android.sparse-image"},
        [pieces[0]],
        length=len(pieces[0]),
    )  # fmt: skip
    assert created.status == 201, created.body
    with disk.open("rb") as file:
        answer = sender.request(
            "PATCH",
            created.header("location"),
            {"Content-Type": "application/partial-upload", "Upload-Offset": "0",
             "Upload-Complete": "?1", "Upload-Draft-Interop-Version": "8"},
            pieces,
            length=sum(piece_length(p) for p in pieces),
            source=file,
        )  # fmt: skip
    assert answer.status == 409
    assert push._moved_offset(answer, 0, created.header("location")) == len(pieces[0])
    assert "continuing from byte" in said[0]


class _Api:
    def __init__(self, profile):
        self.profile = profile


def test_a_pull_killed_midway_resumes_from_the_ranges_it_has(baas_ada, celery_worker, tmp_path):
    disk = _disk(tmp_path)
    baas_ada("image", "create", "disk", "--compression", "zstd")
    baas_ada("image", "push", "disk", str(disk))
    target = tmp_path / "back.img"
    state = tmp_path / ".back.img.baas-pull"
    process = baas_ada.popen("image", "pull", "disk", str(target), "--limit-rate", "4M")
    try:
        _wait(lambda: state.exists() and json.loads(state.read_text())["done"] >= 1, "a range")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    done = json.loads(state.read_text())["done"]
    pulled = baas_ada.json("image", "pull", "disk", str(target))
    assert pulled["resumed_ranges"] == done >= 1
    assert 0 < pulled["received"] < pulled["data_bytes"]
    assert _sha256(target) == _sha256(disk)
    assert target.stat().st_blocks * 512 < 2 * DATA
    assert not state.exists()


def test_auto_compresses_when_the_link_is_slower_than_compression(baas_ada, tmp_path):
    """--compress auto on a slow link (--limit-rate) with data that compresses: zstd."""
    text = b"".join(b"line %d of a log file that compresses well\n" % i for i in range(400_000))
    disk = sparse_disk(tmp_path / "logs.img", 64 * MiB, [(MiB, text[: 16 * MiB])])
    baas_ada("image", "create", "logs")
    result = baas_ada("image", "push", "logs", str(disk), "--limit-rate", "3M", "--json")
    transfer = json.loads(result.stdout)["transfer"]
    assert transfer["encoding"] == "zstd", transfer
    assert "slower than compression" in result.stderr
    assert transfer["sent"] < 16 * MiB  # the sampled seconds, then the compressed data
    target = tmp_path / "back.img"
    baas_ada("image", "pull", "logs", str(target))
    assert _sha256(target) == _sha256(disk)


def test_auto_keeps_sending_data_that_does_not_compress_as_it_is(baas_ada, tmp_path):
    disk = sparse_disk(tmp_path / "random.img", 32 * MiB, [(MiB, random_bytes(12 * MiB, 7))])
    baas_ada("image", "create", "random")
    pushed = baas_ada.json("image", "push", "random", str(disk), "--limit-rate", "4M")
    assert pushed["transfer"]["encoding"] == "sparse"
    assert pushed["transfer"]["compression_sample"]["ratio"] > 0.95
    assert pushed["transfer"]["link_rate"] < 6 * MiB


def test_an_expired_upload_is_said_why_and_started_over(baas_ada, celery_worker, tmp_path):
    from datetime import timedelta

    from django.utils import timezone

    from catalogue.services.uploads.resumable import resumable_expire

    disk = _disk(tmp_path)
    baas_ada("image", "create", "disk")
    upload, length = _kill_push_at_half(baas_ada, disk)
    ResumableUpload.objects.filter(pk=upload.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    assert resumable_expire()["expired"] == 1
    result = baas_ada("image", "push", "disk", str(disk), "--json")
    assert "expired" in result.stderr and "Starting over" in result.stderr
    transfer = json.loads(result.stdout)["transfer"]
    assert transfer["resumed_from"] == 0 and transfer["sent"] == length
    target = tmp_path / "back.img"
    baas_ada("image", "pull", "disk", str(target))
    assert _sha256(target) == _sha256(disk)


def test_the_server_refusing_the_upload_is_exit_1_and_forgets_it(baas_ada, ada, tmp_path):
    """A push past the owner's quota: the server's 413 and its words, nothing left to resume."""
    ada.storage_quota = 8 * MiB
    ada.save()
    disk = _disk(tmp_path)
    baas_ada("image", "create", "disk")
    result = baas_ada("image", "push", "disk", str(disk), code=1)
    assert "413" in result.stderr and "quota" in result.stderr.lower()
    assert not list((baas_ada.home / "state" / "baas" / "push").glob("*.json"))
