"""A network mount from queue to lease end through the API and a real Celery worker.

The worker starts the deployment, starts the export (a real qemu-nbd on
loopback), and, once the lease is released through the API, stops it and
stores the machine's changes as the next version.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from catalogue.models import ImageType, Mount, Version
from catalogue.services.setups import setup_image_add
from flashing import nbd
from flashing.models import NetworkMount, NetworkMountState
from flashing.services.mount_urls import mount_url
from flashing.tasks import network_mounts_reconcile_task
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, write_version
from tests.flashing.nbd_client import (
    MiB,
    content,
    nbd_reachable,
    nbd_read,
    nbd_write,
    sha256,
)

pytestmark = pytest.mark.worker


def wait_for_mount(state: str, timeout: float = 60.0) -> NetworkMount:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mount = NetworkMount.objects.first()
        if mount is not None and mount.state == state:
            return mount
        time.sleep(0.1)
    pytest.fail(f"no network mount reached {state} in {timeout} s: {NetworkMount.objects.first()}")


@pytest.fixture
def stop_servers(celery_worker):
    yield
    for mount in NetworkMount.objects.exclude(pid=None):
        nbd.server_stop(pid=mount.pid, overlay=Path(mount.directory) / nbd.OVERLAY)


def test_the_worker_serves_the_mount_and_stores_its_changes_at_lease_end(
    celery_worker, stop_servers, user, user_client, machine, tmp_path
):
    image = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb")
    pinned = write_version(image, 0, content(7))
    setup = ImageSetupFactory(owner=user)
    setup_image_add(
        actor=user, setup=setup, image=image, version_number=0, sync=True, mount=Mount.NETWORK
    )

    response = user_client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )
    assert response.status_code == 201, response.content
    mount = wait_for_mount(NetworkMountState.READY)
    url = mount_url(mount)
    assert nbd_read(url, tmp_path) == content(7)
    nbd_write(url, 0xCD, 2 * MiB, MiB)

    assert user_client.delete(f"/api/machine/{machine.mac}/lease").status_code in (200, 204)
    mount = wait_for_mount(NetworkMountState.DONE)

    expected = content(7)[: 2 * MiB] + b"\xcd" * MiB
    new = Version.objects.get(image=image, number=1)
    assert (new.size, new.sha256) == (pinned.size, sha256(expected))
    assert mount.result_version == new
    assert not nbd_reachable(url)
    assert not Path(mount.directory).exists()


def test_the_export_outlives_the_worker_that_started_it(
    celery_worker, start_worker, stop_servers, user, user_client, machine, tmp_path
):
    image = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb")
    write_version(image, 0, content(8))
    setup = ImageSetupFactory(owner=user)
    setup_image_add(
        actor=user, setup=setup, image=image, version_number=0, sync=True, mount=Mount.NETWORK
    )
    first = start_worker()
    user_client.post(f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json")
    url = mount_url(wait_for_mount(NetworkMountState.READY))

    first.process.kill()  # no warm shutdown: as if the host's worker crashed
    first.process.wait()
    assert nbd_read(url, tmp_path) == content(8)
    nbd_write(url, 0xEE, 0, MiB)

    start_worker()
    assert user_client.delete(f"/api/machine/{machine.mac}/lease").status_code in (200, 204)
    mount = wait_for_mount(NetworkMountState.DONE)

    assert mount.result_version.sha256 == sha256(b"\xee" * MiB + content(8)[MiB:])
    assert not nbd_reachable(url)


def test_the_beat_sends_a_lost_end_again(
    celery_worker, stop_servers, user, user_client, machine, tmp_path
):
    image = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb")
    write_version(image, 0, content(9))
    setup = ImageSetupFactory(owner=user)
    setup_image_add(
        actor=user, setup=setup, image=image, version_number=0, sync=True, mount=Mount.NETWORK
    )
    user_client.post(f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json")
    mount = wait_for_mount(NetworkMountState.READY)
    nbd_write(mount_url(mount), 0x77, 0, 4096)
    # The lease ended, but the task that should have ended the mount was lost.
    long_ago = timezone.now() - timedelta(hours=1)
    NetworkMount.objects.filter(pk=mount.pk).update(state="ending", updated_at=long_ago)

    network_mounts_reconcile_task.delay()

    mount = wait_for_mount(NetworkMountState.DONE)
    assert mount.result_version.sha256 == sha256(b"\x77" * 4096 + content(9)[4096:])
