"""The offset a client reads is made durable when it asks (HEAD), not at every checkpoint."""

from __future__ import annotations

import os
import time

import pytest

from accounts.services import token_create
from catalogue.models import ResumableUpload
from catalogue.services.uploads import resumable_base
from catalogue.storage import get_storage
from tests.catalogue.test_resumable_live import (
    MiB,
    answer_of,
    create,
    new_image,
    offset_of,
    open_patch,
    request,
)


@pytest.fixture(autouse=True)
def _small_new_images(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB


@pytest.fixture
def secret(user) -> str:
    return token_create(actor=user, user=user, name="live")[1]


def test_head_during_an_append_syncs_and_acknowledges_what_arrived(
    live_server, user, secret, monkeypatch
):
    """No checkpoint comes during this append (ticks and checkpoints pushed far away): the
    offset HEAD reports can only come from HEAD syncing the file itself, and it is recorded
    (a crash after the answer keeps it)."""
    monkeypatch.setattr(resumable_base, "TICK_SECONDS", 600.0)
    monkeypatch.setattr(resumable_base, "CHECKPOINT_SECONDS", 600.0)
    image = new_image(user)
    where = create(live_server, secret, image)
    sock = open_patch(live_server, secret, where, 0, 4 * MiB, complete=False)
    sock.sendall(os.urandom(2 * MiB))
    deadline = time.monotonic() + 15
    while (offset := offset_of(live_server, secret, where)) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < offset <= 2 * MiB
    assert ResumableUpload.objects.get().offset >= offset  # recorded, not only answered
    sock.sendall(os.urandom(2 * MiB))
    status, _ = answer_of(sock)
    assert status == 204
    assert offset_of(live_server, secret, where) == 4 * MiB


def test_head_never_acknowledges_bytes_that_no_running_append_wrote(live_server, user, secret):
    """Bytes past the acknowledged offset in the file (what a crashed request wrote and
    never synced) are not counted by a HEAD while no append runs, and the next append
    cuts them off."""
    image = new_image(user)
    where = create(live_server, secret, image)
    status, _, _ = request(
        live_server, secret, "PATCH", where, b"a" * MiB,
        **{"Content-Type": "application/partial-upload", "Upload-Offset": "0",
           "Upload-Complete": "?0"},
    )  # fmt: skip
    assert status == 204
    token = where.rstrip("/").rsplit("/", 1)[-1]
    part = get_storage().resumable_part(image.uuid, token)
    with open(part.path, "ab") as leftover:
        leftover.write(b"junk" * 1000)
    assert offset_of(live_server, secret, where) == MiB
    status, _, answer = request(
        live_server, secret, "PATCH", where, b"b" * MiB,
        **{"Content-Type": "application/partial-upload", "Upload-Offset": str(MiB),
           "Upload-Complete": "?1"},
    )  # fmt: skip
    assert status == 201, answer
    assert answer["size"] == 2 * MiB
