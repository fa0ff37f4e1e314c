"""Two transactions at once on one machine, on real PostgreSQL: neither deadlocks.

Every change to a machine's work locks the machine first, then the
deployment, then its mounts (``flashing.services.common.lock_machine``). A
lease released while an export step records its event used to deadlock: the
release held the deployment and waited for the mount, the step held the mount
and waited for the deployment (the event refers to it), and the user got a 500.
Here the release is held at that very point while the step runs beside it.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

from catalogue.models import ImageType
from flashing.models import Deployment, NetworkMount, NetworkMountState
from flashing.services.common import lock, lock_machine
from flashing.services.mounts import network_mount_end, network_mounts_end_of
from tests.catalogue.factories import ImageFactory, write_version
from tests.flashing.nbd_client import content
from tests.flashing.test_network_mounts import network_setup, started, system_version

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL"),
]


class Side(threading.Thread):
    """One transaction in its own thread and database connection; keeps what it raised."""

    def __init__(self, work) -> None:
        super().__init__(daemon=True)
        self.work, self.error, self.result = work, None, None

    def run(self) -> None:
        try:
            self.result = self.work()
        except Exception as exc:
            self.error = exc
        finally:
            connections.close_all()


def waits_or_ends(side: Side, timeout: float = 10.0) -> bool:
    """Whether ``side`` ended, or another backend of this database waits on a row lock."""
    deadline = time.monotonic() + timeout
    with connections["default"].cursor() as cursor:
        while time.monotonic() < deadline:
            if not side.is_alive():
                return True
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.05)
    return False


def test_ending_a_mount_while_the_lease_is_released_deadlocks_neither(
    user,
    machine,
    settings,
    django_capture_on_commit_callbacks,
):
    settings.BAAS_NBD_QUEUE = ""
    user_data = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb")
    user_data = write_version(user_data, 0, content(1))
    setup = network_setup(user, user_data, system_version(user))
    deployment = started(user, machine, setup, django_capture_on_commit_callbacks)
    mount = NetworkMount.objects.get(deployment=deployment)
    assert mount.state == NetworkMountState.STARTING
    holding, go_on = threading.Event(), threading.Event()

    def release() -> int:  # what a release does, paused after its first two locks
        with transaction.atomic():
            lock_machine(machine)
            lock(Deployment, deployment.pk)
            holding.set()
            go_on.wait(30)
            return network_mounts_end_of(deployment=deployment, why="Released.")

    releasing = Side(release)
    releasing.start()
    assert holding.wait(10)
    ending = Side(lambda: network_mount_end(mount=mount, why="An administrator ended it."))
    ending.start()
    assert waits_or_ends(ending)
    go_on.set()
    releasing.join(30)
    ending.join(30)

    assert releasing.error is None, releasing.error
    assert ending.error is None, ending.error
    assert releasing.result + ending.result == 1  # one of them ended it, once
    mount.refresh_from_db()
    assert mount.state == NetworkMountState.ENDING
    endings = mount.deployment.events.filter(message__contains="Ending the network mount")
    assert endings.count() == 1
