"""Network mounts: a real qemu-nbd on loopback, a real NBD client (qemu-img, qemu-io), real files.

The steps run as the tasks run them (``network_mount_start``,
``network_mount_finish``), in this process; ``test_mounts_worker.py`` runs
them through a real Celery worker.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from django.urls import reverse

from catalogue.models import Compression, ImageFrozen, ImageType, Mount, Version
from catalogue.services.compression import version_compress
from catalogue.services.lifecycle import versions_prune
from catalogue.services.setups import setup_image_add
from flashing import nbd
from flashing.models import Deployment, DeploymentEvent, NetworkMount, NetworkMountState
from flashing.services.deployments import deployment_enqueue
from flashing.services.leases import lease_end
from flashing.services.mount_beat import network_mounts_reconcile
from flashing.services.mount_urls import mount_url
from flashing.services.mounts import network_mount_finish, network_mount_start
from flashing.services.pipeline import deployment_fail, machine_start_next
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, write_version
from tests.flashing.agentcalls import checked_in
from tests.flashing.factories import LeaseFactory, MachineFactory
from tests.flashing.nbd_client import (
    MiB,
    content,
    nbd_reachable,
    nbd_read,
    nbd_read_tls,
    nbd_write,
    sha256,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def nbd_settings(settings, tmp_path):
    settings.BAAS_NBD_DIR = tmp_path / "nbd"
    settings.BAAS_NBD_BIND = "127.0.0.1"
    settings.BAAS_NBD_HOST = ""
    first = random.randrange(20000, 60000, 100)  # noqa: S311 - parallel runs, other ports
    settings.BAAS_NBD_PORTS = f"{first}-{first + 99}"
    yield settings
    # A failed test must not leave servers behind.
    for mount in NetworkMount.objects.exclude(pid=None):
        nbd.server_stop(pid=mount.pid, overlay=Path(mount.directory) / nbd.OVERLAY)


@pytest.fixture
def user_data(user):
    """A user data image of ``user`` with version 0 (3 MiB)."""
    image = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb")
    return write_version(image, 0, content(1))


def network_setup(user, version, *others):
    setup = ImageSetupFactory(owner=user)
    setup_image_add(
        actor=user,
        setup=setup,
        image=version.image,
        version_number=version.number,
        sync=True,
        mount=Mount.NETWORK,
    )
    for other in others:
        setup_image_add(actor=user, setup=setup, image=other.image, version_number=other.number)
    return setup


def started(user, machine, setup, django_capture_on_commit_callbacks) -> Deployment:
    """Queue ``setup`` and start it, without sending tasks (the test runs the steps)."""
    with django_capture_on_commit_callbacks(execute=False):
        deployment_enqueue(actor=user, machine=machine, setup=setup)
        return machine_start_next(machine_id=machine.pk)


def end_lease(user, machine, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        lease_end(actor=user, lease=machine.leases.get(ended_at=None))


def system_version(user, seed: int = 3):
    """A system image flashed onto /dev/sda: its deployment goes through the management OS."""
    return write_version(ImageFactory(owner=user, target_disk="/dev/sda"), 0, content(seed, MiB))


@pytest.fixture
def served(user, machine, user_data, django_capture_on_commit_callbacks):
    """A deployment flashing a system and network-mounting ``user_data``, its export started."""
    setup = network_setup(user, user_data, system_version(user))
    deployment = started(user, machine, setup, django_capture_on_commit_callbacks)
    assert deployment.state == "booting"
    mount = NetworkMount.objects.get(deployment=deployment)
    assert network_mount_start(mount_id=mount.pk) == "ready"
    mount.refresh_from_db()
    return mount


# --- Serving -------------------------------------------------------------------------------


def test_the_export_serves_the_pinned_version_and_takes_writes(served, user_data, tmp_path):
    url = mount_url(served)
    assert served.state == NetworkMountState.READY
    assert url == f"nbd://127.0.0.1:{served.port}/{served.export_name}"
    assert nbd_read(url, tmp_path) == content(1)

    nbd_write(url, 0xAB, MiB, MiB)

    expected = content(1)[:MiB] + b"\xab" * MiB + content(1)[2 * MiB :]
    assert nbd_read(url, tmp_path) == expected
    stored = Path(served.directory) / str(user_data.image_id) / "0.img"
    assert sha256(stored.read_bytes()) == user_data.sha256  # the base never changes


def test_it_is_not_written_by_the_agent_and_only_its_own_agent_gets_the_url(
    served, user_data, machine, user, django_capture_on_commit_callbacks
):
    other_machine = MachineFactory()
    LeaseFactory(machine=other_machine, user=user)
    other_version = write_version(
        ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb"),
        0,
        content(2, MiB),
    )
    setup = network_setup(user, other_version, system_version(user, 4))
    started(user, other_machine, setup, django_capture_on_commit_callbacks)

    mine = checked_in(machine).get("/api/agent/instructions").json()
    theirs = checked_in(other_machine).get("/api/agent/instructions").json()

    assert str(user_data.image_id) not in str(mine["write"]) and mine["sync"] == []
    assert mine["mounts"] == [
        {
            "image": str(user_data.image_id),
            "version": 0,
            "disk": "/dev/sdb",
            "state": "ready",
            "url": mount_url(served),
            "tls": None,
        }
    ]
    assert served.export_name not in str(theirs)
    assert [m["image"] for m in theirs["mounts"]] == [str(other_version.image_id)]
    assert theirs["mounts"][0]["url"] is None  # not started yet: no URL


def test_a_setup_of_network_mounts_only_skips_the_management_os(
    user, machine, user_data, tmp_path, django_capture_on_commit_callbacks
):
    deployment = started(
        user, machine, network_setup(user, user_data), django_capture_on_commit_callbacks
    )

    assert deployment.state == "done"  # nothing to write: the machine boots at once
    mount = NetworkMount.objects.get(deployment=deployment)
    assert network_mount_start(mount_id=mount.pk) == "ready"
    mount.refresh_from_db()
    assert nbd_read(mount_url(mount), tmp_path) == content(1)


def test_a_flashed_image_of_the_same_setup_is_still_written(
    user, machine, user_data, django_capture_on_commit_callbacks
):
    system = write_version(ImageFactory(owner=user, target_disk="/dev/sda"), 0, content(3, MiB))
    setup = network_setup(user, user_data, system)
    started(user, machine, setup, django_capture_on_commit_callbacks)

    instructions = checked_in(machine).get("/api/agent/instructions").json()

    assert [w["image"] for w in instructions["write"]] == [str(system.image_id)]
    assert [m["image"] for m in instructions["mounts"]] == [str(user_data.image_id)]


def test_a_compressed_version_is_served_from_a_decompressed_sparse_base(
    user, machine, tmp_path, django_capture_on_commit_callbacks
):
    image = ImageFactory(owner=user, type=ImageType.USER_DATA, compression=Compression.ZSTD)
    version = write_version(image, 0, content(4))
    version_compress(version_id=version.pk)
    version.refresh_from_db()
    assert version.stored_compression == Compression.ZSTD
    deployment = started(
        user, machine, network_setup(user, version), django_capture_on_commit_callbacks
    )
    mount = NetworkMount.objects.get(deployment=deployment)

    assert network_mount_start(mount_id=mount.pk) == "ready"
    mount.refresh_from_db()

    assert nbd_read(mount_url(mount), tmp_path) == content(4)
    base = Path(mount.directory) / str(image.pk) / "0.img"
    assert base.stat().st_blocks * 512 < 2.5 * MiB  # a third of it is zeros: holes
    nbd_write(mount_url(mount), 0x5A, 0, 4096)
    end_lease(user, machine, django_capture_on_commit_callbacks)
    assert network_mount_finish(mount_id=mount.pk) == "stored"
    new = Version.objects.get(image=image, number=1)
    assert new.sha256 == sha256(b"\x5a" * 4096 + content(4)[4096:])


# --- Ending -------------------------------------------------------------------------------


def test_at_lease_end_the_changes_become_the_next_version(
    served, user_data, user, machine, disk_root, django_capture_on_commit_callbacks
):
    url = mount_url(served)
    nbd_write(url, 0xAB, 0, MiB)
    expected = b"\xab" * MiB + content(1)[MiB:]

    end_lease(user, machine, django_capture_on_commit_callbacks)
    served.refresh_from_db()
    assert served.state == NetworkMountState.ENDING
    assert network_mount_finish(mount_id=served.pk) == "stored"

    new = Version.objects.get(image=user_data.image, number=1)
    assert (new.size, new.sha256) == (len(expected), sha256(expected))
    assert new.uploaded_by == user
    assert f"deployment #{served.deployment_id}" in new.note
    assert (disk_root / str(user_data.image_id) / "1.img").read_bytes() == expected
    served.refresh_from_db()
    assert (served.state, served.result_version) == (NetworkMountState.DONE, new)
    assert not nbd_reachable(url)
    assert not Path(served.directory).exists()
    assert not nbd.server_alive(pid=served.pid, overlay=Path(served.directory) / nbd.OVERLAY)
    message = DeploymentEvent.objects.filter(action="network_mount").last().message
    assert "version 1" in message and new.sha256 in message


def test_an_unchanged_mount_makes_no_version(
    served, user_data, user, machine, tmp_path, django_capture_on_commit_callbacks
):
    url = mount_url(served)
    assert nbd_read(url, tmp_path) == content(1)  # read, never written

    end_lease(user, machine, django_capture_on_commit_callbacks)

    assert network_mount_finish(mount_id=served.pk) == "unchanged"
    assert list(user_data.image.versions.values_list("number", flat=True)) == [0]
    served.refresh_from_db()
    assert served.state == NetworkMountState.DONE and served.result_version is None
    assert not nbd_reachable(url) and not Path(served.directory).exists()


def test_bytes_written_back_unchanged_make_no_version(
    served, user_data, user, machine, django_capture_on_commit_callbacks
):
    nbd_write(mount_url(served), 0, 0, 64 * 1024)  # version 0 starts with 64 KiB of zeros

    end_lease(user, machine, django_capture_on_commit_callbacks)

    assert network_mount_finish(mount_id=served.pk) == "unchanged"
    assert user_data.image.versions.count() == 1


def test_finishing_twice_stores_one_version(
    served, user_data, user, machine, django_capture_on_commit_callbacks
):
    nbd_write(mount_url(served), 0x11, 0, 4096)
    end_lease(user, machine, django_capture_on_commit_callbacks)

    assert network_mount_finish(mount_id=served.pk) == "stored"
    assert network_mount_finish(mount_id=served.pk) == "skipped"
    assert user_data.image.versions.count() == 2


def test_a_failed_upload_keeps_the_overlay_and_is_retried(
    served, user_data, user, machine, django_capture_on_commit_callbacks
):
    nbd_write(mount_url(served), 0x22, 0, MiB)
    end_lease(user, machine, django_capture_on_commit_callbacks)
    user.storage_quota = 1  # byte: the upload is refused
    user.save()

    assert network_mount_finish(mount_id=served.pk) == "failed"
    served.refresh_from_db()
    assert served.state == NetworkMountState.ENDING and served.attempts == 1
    assert "quota" in served.error.lower() or "storage" in served.error.lower(), served.error
    assert (Path(served.directory) / nbd.OVERLAY).exists()
    assert user_data.image.versions.count() == 1

    user.storage_quota = None
    user.save()
    assert network_mount_finish(mount_id=served.pk) == "stored"
    assert user_data.image.versions.count() == 2


def test_the_next_deployment_ends_the_mount(
    served, user, machine, user_data, django_capture_on_commit_callbacks
):
    Deployment.objects.filter(pk=served.deployment_id).update(state="done")
    other = write_version(ImageFactory(owner=user, target_disk="/dev/sda"), 0, content(5, MiB))
    setup = ImageSetupFactory(owner=user)
    setup_image_add(actor=user, setup=setup, image=other.image, version_number=0)

    started(user, machine, setup, django_capture_on_commit_callbacks)

    served.refresh_from_db()
    assert served.state == NetworkMountState.ENDING
    assert network_mount_finish(mount_id=served.pk) == "unchanged"


def test_a_failed_deployment_ends_its_mount_at_once_and_a_dead_server_is_restarted(
    served, django_capture_on_commit_callbacks, tmp_path
):
    overlay = Path(served.directory) / nbd.OVERLAY
    nbd.server_stop(pid=served.pid, overlay=overlay)  # the server died
    assert network_mount_start(mount_id=served.pk) == "restarted"
    served.refresh_from_db()
    assert nbd_read(mount_url(served), tmp_path) == content(1)

    with django_capture_on_commit_callbacks(execute=False):
        deployment_fail(actor=None, deployment=served.deployment, reason="test")
    served.refresh_from_db()
    assert served.state == NetworkMountState.ENDING  # not left for the beat to find
    with django_capture_on_commit_callbacks(execute=False):
        assert network_mounts_reconcile()["ended"] == 0
    assert network_mount_finish(mount_id=served.pk) == "unchanged"


def test_a_port_in_use_is_skipped(
    user, machine, user_data, settings, django_capture_on_commit_callbacks
):
    import socket

    first = int(settings.BAAS_NBD_PORTS.split("-")[0])
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", first))
        taken.listen()
        deployment = started(
            user, machine, network_setup(user, user_data), django_capture_on_commit_callbacks
        )
        mount = NetworkMount.objects.get(deployment=deployment)
        assert network_mount_start(mount_id=mount.pk) == "ready"
    mount.refresh_from_db()
    assert mount.port != first


# --- What users see ----------------------------------------------------------------------


def test_the_deployment_shows_its_mount_to_its_user_only(served, user, user_client, other_client):
    answer = user_client.get(f"/api/deployment/{served.deployment_id}").json()

    assert answer["network_mounts"] == [
        {
            "image": str(served.image_id),
            "version": 0,
            "disk": "/dev/sdb",
            "state": "ready",
            "url": mount_url(served),
            "tls": None,
            "error": "",
            "result_version": None,
            "ended_at": None,
        }
    ]
    assert other_client.get(f"/api/deployment/{served.deployment_id}").status_code == 404


def test_the_deployment_page_explains_the_mount(served, client, user):
    client.force_login(user)

    page = client.get(
        reverse("machines:deployment", kwargs={"deployment_id": served.deployment_id})
    ).content.decode()

    assert mount_url(served) in page
    assert "Serve " in page and "over the network as /dev/sdb" in page
    assert "boots sooner" in page and "next version" in page


# --- What a live mount keeps -----------------------------------------------------------------


def test_a_live_mount_keeps_its_version_and_its_image(
    served, user_data, user, user_client, machine, django_capture_on_commit_callbacks
):
    image = user_data.image
    ImageFrozen.objects.filter(image=image).delete()  # no setup pins it any more
    write_version(image, 1, content(6, MiB))
    image.keep_versions = 1
    image.save()

    assert versions_prune(image_uuid=image.pk) == []
    refused = user_client.delete(f"/api/image/{image.pk}")
    assert refused.status_code == 409
    assert "mounted over the network" in refused.json()["detail"]

    end_lease(user, machine, django_capture_on_commit_callbacks)
    assert network_mount_finish(mount_id=served.pk) == "unchanged"
    Deployment.objects.filter(pk=served.deployment_id).update(state="done")
    assert versions_prune(image_uuid=image.pk) == [0]
    assert user_client.delete(f"/api/image/{image.pk}").status_code == 204
    served.refresh_from_db()
    assert (served.image, served.version_number) == (None, 0)  # the history stays


# --- Crashes ------------------------------------------------------------------------------


def test_a_server_whose_start_was_not_recorded_is_replaced_not_doubled(served, tmp_path):
    overlay = Path(served.directory) / nbd.OVERLAY
    lost = served.pid
    nbd_write(mount_url(served), 0x33, 0, 4096)
    # As if the worker died between starting the server and recording it.
    NetworkMount.objects.filter(pk=served.pk).update(pid=None, state="starting", ready_at=None)

    assert network_mount_start(mount_id=served.pk) == "ready"

    served.refresh_from_db()
    assert served.pid != lost and not nbd.server_alive(pid=lost, overlay=overlay)
    assert nbd_read(mount_url(served), tmp_path)[:4096] == b"\x33" * 4096  # the same overlay


def test_ending_stops_a_server_only_its_pid_file_knows(
    served, user, machine, django_capture_on_commit_callbacks
):
    url = mount_url(served)
    NetworkMount.objects.filter(pk=served.pk).update(pid=None)

    end_lease(user, machine, django_capture_on_commit_callbacks)

    assert network_mount_finish(mount_id=served.pk) == "unchanged"
    assert not nbd_reachable(url)


def test_a_step_of_a_mount_at_work_makes_the_others_wait(
    served, user, machine, django_capture_on_commit_callbacks
):
    end_lease(user, machine, django_capture_on_commit_callbacks)

    with nbd.mount_lock(Path(served.directory)):
        assert network_mount_finish(mount_id=served.pk) == "busy"
        served.refresh_from_db()
        assert served.state == NetworkMountState.ENDING and served.attempts == 0

    assert network_mount_finish(mount_id=served.pk) == "unchanged"


def test_a_machine_with_a_live_mount_is_not_deleted(served, admin_client_api, machine):
    Deployment.objects.filter(pk=served.deployment_id).update(state="done")

    response = admin_client_api.delete(f"/api/machine/{machine.mac}")

    assert response.status_code == 409
    assert "mounted over the network" in response.json()["detail"]
    assert NetworkMount.objects.filter(pk=served.pk).exists()


# --- TLS -------------------------------------------------------------------------------------


def test_with_tls_only_a_client_with_the_mounts_key_connects(
    user, machine, user_data, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.BAAS_NBD_TLS_PSK = True
    setup = network_setup(user, user_data, system_version(user))
    deployment = started(user, machine, setup, django_capture_on_commit_callbacks)
    mount = NetworkMount.objects.get(deployment=deployment)
    assert network_mount_start(mount_id=mount.pk) == "ready"
    mount.refresh_from_db()
    url = mount_url(mount)

    (entry,) = checked_in(machine).get("/api/agent/instructions").json()["mounts"]

    assert entry["tls"] == {"identity": "baas", "psk": mount.tls_psk}
    assert len(mount.tls_psk) == 64
    assert not nbd_reachable(url)  # plain NBD is refused
    assert nbd_read_tls(url, "baas", mount.tls_psk, tmp_path) == content(1)
    with pytest.raises(subprocess.CalledProcessError):
        nbd_read_tls(url, "baas", "00" * 32, tmp_path)
