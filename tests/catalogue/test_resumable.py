"""Resumable uploads (draft-ietf-httpbis-resumable-upload, interop version 8) through the
API: creation, HEAD, PATCH, DELETE, expiry, quota, and every encoding resumed."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import time
from datetime import timedelta

import pytest
import zstandard
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from catalogue.models import ResumableUpload, UploadState, Version
from catalogue.selectors.usage import user_storage_used
from catalogue.storage import get_storage
from catalogue.tasks import purge_stale_uploads_task, resumable_uploads_expire_task
from diskimage import BLOCK
from diskimage.sparse import MEDIA_TYPE, encoded
from tests.catalogue.factories import ImageFactory

MiB = 1 << 20
DRAFT = {"HTTP_UPLOAD_DRAFT_INTEROP_VERSION": "8"}


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB


@pytest.fixture
def image(user):
    image = ImageFactory(owner=user)
    Version.objects.create(image=image, number=0, size=0, sha256="0" * 64, stored_size=0)
    return image


def disk(data_kib: int = 700, holes_mib: int = 3) -> bytes:
    """Whole blocks (as a sparse image needs): data, zeros, data."""
    return (
        os.urandom(data_kib * 1024)
        + bytes(holes_mib * MiB)
        + os.urandom(BLOCK)
        + b"end".ljust(BLOCK)
    )


def create(client, image, body: bytes = b"", *, content_type="application/octet-stream", **h):
    headers = {**DRAFT, "HTTP_UPLOAD_COMPLETE": "?0", **h}
    return client.generic(
        "POST", f"/api/image/{image.uuid}", body, content_type=content_type, **headers
    )


def patch(client, where: str, body: bytes, offset: int, complete: bool, **h):
    content_type = h.pop("content_type", "application/partial-upload")
    headers = {
        **DRAFT,
        "HTTP_UPLOAD_OFFSET": str(offset),
        "HTTP_UPLOAD_COMPLETE": "?1" if complete else "?0",
        **h,
    }
    return client.generic("PATCH", where, body, content_type=content_type, **headers)


def spool_files(image) -> list[str]:
    directory = get_storage().image_dir(image.uuid)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".upload-"))


def stored(image, number: int) -> bytes:
    return get_storage().version_path(image.uuid, number, "none").read_bytes()


def send_in_parts(client, image, wire: bytes, cuts: list[int], **create_headers) -> dict:
    """Create with the first part, append the others, the last completing; the version JSON."""
    bounds = [0, *sorted(set(cuts)), len(wire)]
    created = create(client, image, wire[: bounds[1]], **create_headers)
    assert created.status_code == 201, created.content
    where = created["Location"]
    assert created["Upload-Offset"] == str(bounds[1])
    for start, end in itertools.pairwise(bounds[1:]):
        head = client.head(where)
        assert head.status_code == 204
        assert int(head["Upload-Offset"]) == start  # every byte is acknowledged
        last = end == len(wire)
        answer = patch(client, where, wire[start:end], start, last)
        assert answer.status_code == (201 if last else 204), answer.content
    if len(bounds) == 2:  # all in the creation: complete it with an empty append
        answer = patch(client, where, b"", len(wire), True)
        assert answer.status_code == 201, answer.content
    assert answer["Upload-Complete"] == "?1"
    return answer.json()


# --- The protocol ---------------------------------------------------------------------------


def test_create_head_append_complete_gives_the_plain_uploads_version(user_client, image):
    data = disk()
    created = create(user_client, image, b"", HTTP_UPLOAD_LENGTH=str(len(data)))
    assert created.status_code == 201, created.content
    where = created["Location"]
    assert where.startswith("/api/uploads/")
    assert created["Upload-Offset"] == "0"
    assert created["Upload-Complete"] == "?0"
    assert created["Upload-Draft-Interop-Version"] == "8"
    assert created["Upload-Length"] == str(len(data))
    assert "max-size=" in created["Upload-Limit"] and "max-age=" in created["Upload-Limit"]
    body = created.json()
    assert (body["upload"], body["offset"], body["state"]) == (where, 0, "receiving")
    assert len(spool_files(image)) == 1

    head = user_client.head(where)
    assert (head.status_code, head["Upload-Offset"]) == (204, "0")
    assert head["Cache-Control"] == "no-store"

    first = patch(user_client, where, data[:123457], 0, False)
    assert (first.status_code, first["Upload-Offset"]) == (204, "123457")
    done = patch(user_client, where, data[123457:], 123457, True)
    assert done.status_code == 201, done.content
    version = done.json()
    assert (version["version"], version["size"]) == (1, len(data))
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert done["Location"] == f"/api/image/{image.uuid}/1"
    assert stored(image, 1) == data
    assert spool_files(image) == []  # its bytes as sent are gone once committed

    after = user_client.head(where)
    assert (after.status_code, after["Upload-Complete"]) == (204, "?1")
    assert after["Content-Location"] == f"/api/image/{image.uuid}/1"
    assert user_client.get(where).json()["version"] == 1
    again = patch(user_client, where, b"x", len(data), True)
    assert again.status_code == 400
    assert again.json()["type"].endswith("#completed-upload")
    assert Version.objects.filter(image=image).count() == 2


def test_a_partial_creation_body_is_acknowledged_and_the_rest_appended(user_client, image):
    data = disk()
    version = send_in_parts(user_client, image, data, [77777, 500001])
    assert stored(image, version["version"]) == data


def test_a_wrong_offset_is_409_with_the_servers_offset(user_client, image):
    where = create(user_client, image, b"abc" * 1000)["Location"]
    answer = patch(user_client, where, b"more", 10, False)
    assert answer.status_code == 409
    assert answer["Upload-Offset"] == "3000"
    body = answer.json()
    assert body["expected-offset"] == 3000 and body["provided-offset"] == 10
    assert body["type"].endswith("#mismatching-upload-offset")
    assert "resume from byte 3000" in body["detail"]
    assert user_client.head(where)["Upload-Offset"] == "3000"  # nothing appended


def test_another_users_upload_is_404_and_untouched(user_client, other_client, image):
    where = create(user_client, image, b"x" * 5000)["Location"]
    assert other_client.head(where).status_code == 404
    assert other_client.get(where).json() == {"detail": "No such upload."}
    assert patch(other_client, where, b"y", 5000, True).status_code == 404
    assert other_client.delete(where).status_code == 404
    assert user_client.head(where)["Upload-Offset"] == "5000"
    assert other_client.get("/api/uploads").json()["count"] == 0
    assert user_client.get("/api/uploads").json()["results"][0]["upload"] == where


def test_an_anonymous_client_cannot_create_or_append(anon_client, user_client, image):
    assert create(anon_client, image).status_code in (401, 403)
    where = create(user_client, image)["Location"]
    assert anon_client.head(where).status_code in (401, 403)
    assert patch(anon_client, where, b"x", 0, False).status_code in (401, 403)


def test_a_guessed_token_is_404(user_client, image):
    create(user_client, image)
    assert user_client.head("/api/uploads/" + "A" * 32).status_code == 404
    assert user_client.get("/api/uploads/../../etc").status_code == 404


def test_delete_abandons_it_and_leaves_nothing(user_client, image):
    where = create(user_client, image, os.urandom(100_000))["Location"]
    assert user_storage_used(user=image.owner) > 0
    assert user_client.delete(where).status_code == 204
    assert spool_files(image) == []
    assert not ResumableUpload.objects.exists()
    assert user_client.head(where).status_code == 404
    assert patch(user_client, where, b"x", 100_000, True).status_code == 404
    assert Version.objects.filter(image=image).count() == 1
    assert user_storage_used(user=image.owner) == 0


def test_an_expired_upload_is_404_saying_so_and_its_bytes_and_quota_are_freed(
    user_client, image, settings
):
    where = create(user_client, image, os.urandom(200_000))["Location"]
    assert user_storage_used(user=image.owner) >= 200_000
    assert resumable_uploads_expire_task() == {"expired": 0, "forgotten": 0, "orphans": 0}
    ResumableUpload.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert resumable_uploads_expire_task()["expired"] == 1
    assert spool_files(image) == []
    assert user_storage_used(user=image.owner) == 0
    answer = user_client.get(where)
    assert answer.status_code == 404
    assert answer.json()["state"] == "expired"
    assert "expired" in answer.json()["detail"] and "24 hours" in answer.json()["detail"]
    assert user_client.head(where).status_code == 404
    refused = patch(user_client, where, b"x", 200_000, True)
    assert (refused.status_code, refused.json()["state"]) == (404, "expired")
    # A week later the tombstone goes too.
    ResumableUpload.objects.update(updated_at=timezone.now() - timedelta(days=8))
    assert resumable_uploads_expire_task()["forgotten"] == 1
    assert user_client.get(where).json() == {"detail": "No such upload."}


def test_each_append_moves_the_expiry_forward(user_client, image, settings):
    settings.BAAS_UPLOAD_RESUME_HOURS = 1
    where = create(user_client, image, b"a" * 10)["Location"]
    ResumableUpload.objects.update(expires_at=timezone.now() + timedelta(seconds=5))
    assert patch(user_client, where, b"b" * 10, 10, False).status_code == 204
    upload = ResumableUpload.objects.get()
    assert upload.expires_at > timezone.now() + timedelta(minutes=59)


def test_the_stale_part_purge_keeps_an_unfinished_uploads_bytes(user_client, image, settings):
    settings.BAAS_STALE_UPLOAD_SECONDS = 0
    where = create(user_client, image, b"z" * 5000)["Location"]
    assert purge_stale_uploads_task() == 0
    assert len(spool_files(image)) == 1
    assert user_client.head(where)["Upload-Offset"] == "5000"


def test_orphaned_bytes_without_a_row_are_removed_by_the_expiry(user_client, image):
    create(user_client, image, b"q" * 5000)
    ResumableUpload.objects.all().delete()  # as if a DELETE raced a killed appender
    path = get_storage().image_dir(image.uuid) / spool_files(image)[0]
    os.utime(path, (0, 0))
    assert resumable_uploads_expire_task()["orphans"] == 1
    assert spool_files(image) == []


# --- Quota and limits ---------------------------------------------------------------------


def test_unfinished_bytes_count_in_the_quota_until_abandoned(user_client, user, image):
    user.storage_quota = 3 * MiB
    user.save()
    where = create(user_client, image, os.urandom(2 * MiB))["Location"]
    used = user_storage_used(user=user)
    assert 2 * MiB <= used <= 2 * MiB + 2 * BLOCK
    assert user_client.get(f"/api/user/{user.username}/usage").json()["used"] == used
    # A plain upload that would fit without it is refused while it is unfinished.
    plain = user_client.generic(
        "POST", f"/api/image/{image.uuid}", os.urandom(int(1.5 * MiB)),
        content_type="application/octet-stream",
    )  # fmt: skip
    assert plain.status_code == 413
    # So is appending past the quota; what was acknowledged stays.
    refused = patch(user_client, where, os.urandom(2 * MiB), 2 * MiB, False)
    assert refused.status_code == 413
    assert "Upload-Limit" in refused
    assert int(user_client.head(where)["Upload-Offset"]) >= 2 * MiB
    assert user_client.delete(where).status_code == 204
    assert user_storage_used(user=user) == 0
    again = user_client.generic(
        "POST", f"/api/image/{image.uuid}", os.urandom(int(1.5 * MiB)),
        content_type="application/octet-stream",
    )  # fmt: skip
    assert again.status_code == 201


def test_an_announced_length_over_the_limit_or_quota_is_413_up_front(user_client, user, image):
    user.storage_quota = MiB
    user.save()
    answer = create(user_client, image, HTTP_UPLOAD_LENGTH=str(2 * MiB))
    assert answer.status_code == 413
    assert not ResumableUpload.objects.exists()


def test_more_bytes_than_upload_length_are_refused(user_client, image):
    where = create(user_client, image, b"a" * 100, HTTP_UPLOAD_LENGTH="150")["Location"]
    over = patch(user_client, where, b"b" * 100, 100, True)
    assert over.status_code == 400
    assert over.json()["type"].endswith("#inconsistent-upload-length")
    assert user_client.head(where)["Upload-Offset"] == "150"  # the announced bytes are kept
    short = ResumableUpload.objects.get()
    assert short.state == UploadState.RECEIVING
    where2 = create(user_client, image, b"a" * 100, HTTP_UPLOAD_LENGTH="150")["Location"]
    early = patch(user_client, where2, b"", 100, True)
    assert early.status_code == 400
    assert early.json()["type"].endswith("#inconsistent-upload-length")


def test_a_user_has_at_most_the_configured_number_of_unfinished_uploads(
    user_client, image, settings
):
    settings.BAAS_UPLOAD_RESUME_MAX = 2
    first = create(user_client, image)["Location"]
    create(user_client, image)
    refused = create(user_client, image)
    assert refused.status_code == 409
    assert first in refused.json()["uploads"]
    user_client.delete(first)
    assert create(user_client, image).status_code == 201


def test_the_draft_headers_are_checked(user_client, image):
    wrong = create(user_client, image, HTTP_UPLOAD_DRAFT_INTEROP_VERSION="6")
    assert wrong.status_code == 400
    assert wrong["Upload-Draft-Interop-Version"] == "8"
    assert "interop version 8" in wrong.json()["detail"]
    where = create(user_client, image)["Location"]
    not_partial = patch(user_client, where, b"x", 0, False, content_type="application/octet-stream")
    assert not_partial.status_code == 415
    no_offset = user_client.generic(
        "PATCH", where, b"x", content_type="application/partial-upload",
        HTTP_UPLOAD_COMPLETE="?0",
    )  # fmt: skip
    assert no_offset.status_code == 400
    bad_offset = patch(user_client, where, b"x", 0, False, HTTP_UPLOAD_OFFSET="-1")
    assert bad_offset.status_code == 400
    form = user_client.generic(
        "POST", f"/api/image/{image.uuid}", b"--x--",
        content_type="multipart/form-data; boundary=x", HTTP_UPLOAD_COMPLETE="?0", **DRAFT,
    )  # fmt: skip
    assert form.status_code == 415


def test_upload_complete_true_is_the_plain_single_request_upload(user_client, image):
    data = disk()
    answer = user_client.generic(
        "POST", f"/api/image/{image.uuid}", data, content_type="application/octet-stream",
        HTTP_UPLOAD_COMPLETE="?1", **DRAFT,
    )  # fmt: skip
    assert answer.status_code == 201
    assert stored(image, answer.json()["version"]) == data
    assert not ResumableUpload.objects.exists()


def test_an_image_refused_at_completion_ends_the_upload_saying_why(user_client, image):
    digest = "sha-256=:" + __import__("base64").b64encode(b"\0" * 32).decode() + ":"
    where = create(user_client, image, b"", HTTP_REPR_DIGEST=digest)["Location"]
    answer = patch(user_client, where, disk(), 0, True)
    assert answer.status_code == 400
    assert answer["Upload-Complete"] == "?1"
    assert spool_files(image) == []
    gone = user_client.get(where)
    assert (gone.status_code, gone.json()["state"]) == (404, "failed")
    assert Version.objects.filter(image=image).count() == 1


def test_the_note_and_digest_of_the_creation_apply_to_the_version(user_client, image):
    data = disk()
    digest = "sha-256=:" + __import__("base64").b64encode(hashlib.sha256(data).digest()).decode()
    where = create(
        user_client, image, b"", HTTP_REPR_DIGEST=digest + ":", HTTP_BAAS_NOTE="r%C3%A9sum%C3%A9"
    )["Location"]
    version = patch(user_client, where, data, 0, True).json()
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert Version.objects.get(image=image, number=version["version"]).note == "résumé"


# --- Every encoding, resumed anywhere ---------------------------------------------------------


def _wire(encoding: str, data: bytes) -> tuple[bytes, dict]:
    if encoding == "zstd":
        # Several frames, and cuts inside them: offsets need no frame boundary.
        packed = zstandard.ZstdCompressor(level=1).compress(data[: len(data) // 2])
        packed += zstandard.ZstdCompressor(level=1).compress(data[len(data) // 2 :])
        return packed, {"HTTP_CONTENT_ENCODING": "zstd"}
    if encoding == "gzip":
        return gzip.compress(data, 1), {"content_type": "application/gzip"}
    if encoding == "sparse":
        return b"".join(encoded(data)), {"content_type": MEDIA_TYPE}
    return data, {}


@pytest.mark.parametrize("encoding", ["none", "zstd", "gzip", "sparse"])
@pytest.mark.parametrize("declared", [True, False])
def test_every_encoding_resumes_at_any_byte(user_client, image, encoding, declared):
    data = disk()
    wire, headers = _wire(encoding, data)
    if not declared:  # recognised from its first bytes at completion
        headers = {}
    cuts = [1, 13, len(wire) // 3 + 5, len(wire) - 7]  # mid-header, mid-chunk, mid-frame
    version = send_in_parts(user_client, image, wire, cuts, **headers)
    assert version["sha256"] == hashlib.sha256(data).hexdigest()
    assert version["size"] == len(data)
    assert stored(image, version["version"]) == data


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    encoding=st.sampled_from(["none", "sparse"]),
    fractions=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=4),
)
def test_wherever_the_uploads_are_cut_the_version_is_the_file_byte_for_byte(
    user_client, user, encoding, fractions
):
    image = ImageFactory(owner=user)
    data = os.urandom(3 * BLOCK) + bytes(8 * BLOCK) + os.urandom(2 * BLOCK + 0)
    wire, headers = _wire(encoding, data)
    cuts = [min(len(wire) - 1, max(1, int(f * len(wire)))) for f in fractions]
    version = send_in_parts(user_client, image, wire, cuts, **headers)
    assert stored(image, version["version"]) == data
    assert spool_files(image) == []


def test_an_agent_sees_nobodys_uploads(user_client, image):
    from types import SimpleNamespace

    from catalogue.exceptions import UploadNotFound
    from catalogue.services.uploads import resumable

    token = create(user_client, image)["Location"].rsplit("/", 1)[1]
    agent = SimpleNamespace(is_agent=True, is_authenticated=True, pk=image.owner.pk)
    with pytest.raises(UploadNotFound):
        resumable.resumable_get(actor=agent, token=token)
    with pytest.raises(UploadNotFound):
        resumable.resumable_abandon(actor=agent, token=token)
    assert list(resumable.resumable_list(actor=agent)) == []
    assert ResumableUpload.objects.filter(token=token).exists()


def test_the_expiry_is_scheduled_by_beat(settings):
    entries = {e["task"]: e for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert entries["catalogue.resumable_uploads_expire"]["schedule"] > 0


@pytest.mark.worker
def test_a_beat_tick_on_a_real_worker_expires_an_unfinished_upload(celery_worker, user):
    from catalogue.services.uploads.resumable import resumable_create

    image = ImageFactory(owner=user)
    upload = resumable_create(
        actor=user, image=image, encoding=None, length=None, expected_sha256=None,
        want_digest=False,
    )  # fmt: skip
    ResumableUpload.objects.filter(pk=upload.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert len(spool_files(image)) == 1

    resumable_uploads_expire_task.delay()  # what beat sends

    deadline = time.monotonic() + 60
    while spool_files(image) or ResumableUpload.objects.get().state != UploadState.EXPIRED:
        if time.monotonic() > deadline:
            pytest.fail(f"The expiry did not happen:\n{celery_worker.log()}")
        time.sleep(0.1)
