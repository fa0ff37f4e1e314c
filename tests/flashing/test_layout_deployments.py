"""A setup with a partition table on a machine: its fit when queued, the table, the record."""

from __future__ import annotations

import pytest

from catalogue.models import ImageType
from diskimage import gpt
from flashing.models import Deployment, DiskContent
from flashing.services.pipeline import machine_start_next
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.agentcalls import checked_in, report_writing, written
from tests.flashing.factories import MachineDiskFactory

pytestmark = pytest.mark.django_db
MIB = gpt.MIB


def layout(root=8 * MIB, home=None):
    return {
        "disk": "/dev/sda",
        "partitions": [
            {"label": "root", "size": root, "type": "linux"},
            {"label": "home", "size": home, "type": "home"},
        ],
    }


def layout_setup(owner, root_image_size=64 * 1024, home_image_size=64 * 1024, **table):
    setup = ImageSetupFactory(owner=owner, layout=layout(**table))
    for label, image_type, size in (
        ("root", ImageType.SYSTEM, root_image_size),
        ("home", ImageType.USER_DATA, home_image_size),
    ):
        image = ImageFactory(owner=owner, type=image_type)
        version = VersionFactory(image=image, number=0, content=b"\7" * size)
        ImageFrozenFactory(setup=setup, version=version, partition=label, sync=True)
    return setup


def queue(client, machine, setup):
    return client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )


def test_a_table_that_does_not_fit_the_machines_disk_is_refused_with_the_numbers(
    user_client, user, machine
):
    MachineDiskFactory(machine=machine, path="/dev/sda", size=8 * MIB)

    response = queue(user_client, machine, layout_setup(user))

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "does not fit" in detail and f"{machine.name}:/dev/sda" in detail
    assert f"the disk has {8 * MIB} bytes" in detail and f"need {10 * MIB + 16896} bytes" in detail
    assert not Deployment.objects.filter(machine=machine).exists()


def test_an_image_larger_than_the_rest_of_the_disk_is_refused_with_the_numbers(
    user_client, user, machine
):
    MachineDiskFactory(machine=machine, path="/dev/sda", size=16 * MIB)
    setup = layout_setup(user, home_image_size=7 * MIB)  # home: 16 - 1 - 8 - 1 = 6 MiB

    response = queue(user_client, machine, setup)

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "is 7340032 bytes (7.0 MiB); partition 'home'" in detail
    assert "holds 6291456 bytes (6.0 MiB)" in detail


def test_a_table_on_a_disk_the_machine_lacks_is_refused(user_client, user, machine):
    MachineDiskFactory(machine=machine, path="/dev/vda", size=64 * MIB)
    response = queue(user_client, machine, layout_setup(user))
    assert response.status_code == 400
    assert "has no disk /dev/sda for the partition table" in response.json()["detail"]


@pytest.fixture
def deployment(user_client, user, machine):
    MachineDiskFactory(machine=machine, path="/dev/sda", size=64 * MIB)
    setup = layout_setup(user)
    assert queue(user_client, machine, setup).status_code == 201
    deployment = machine_start_next(machine_id=machine.pk)
    setup.layout = None  # edited after it was queued: the deployment keeps its copy
    setup.save()
    return deployment


def reported(created=True, root=8 * MIB):
    placed = gpt.plan(64 * MIB, [gpt.Spec("root", root, "linux"), gpt.Spec("home", None, "home")])
    return {
        "disk": "/dev/sda",
        "created": created,
        "size": 64 * MIB,
        "partitions": [p.as_json() for p in placed],
    }


def test_the_agent_is_told_the_table_and_each_images_partition(machine, deployment):
    agent = checked_in(machine)

    instructions = agent.get("/api/agent/instructions").json()

    assert instructions["layouts"] == [
        {
            "disk": "/dev/sda",
            "partitions": [
                {"number": 1, "label": "root", "size": 8 * MIB, "type": gpt.TYPES["linux"]},
                {"number": 2, "label": "home", "size": None, "type": gpt.TYPES["home"]},
            ],
        }
    ]
    assert sorted(w["disk"] for w in instructions["write"]) == ["/dev/sda1", "/dev/sda2"]


def test_done_records_each_partition_and_the_table(machine, deployment):
    stale = DiskContent.objects.create(
        machine=machine, disk="/dev/sda3", version_number=0, written_at=deployment.created_at
    )
    agent = checked_in(machine)
    report_writing(agent, deployment)

    response = agent.post(
        "/api/agent/result",
        {"state": "done", "written": written(deployment), "layouts": [reported()]},
        format="json",
    )

    assert response.json() == {"state": "done"}
    disks = DiskContent.objects.filter(machine=machine).values_list("disk", "sync")
    assert sorted(disks) == [("/dev/sda1", True), ("/dev/sda2", True)]
    assert not DiskContent.objects.filter(pk=stale.pk).exists()  # a new table: gone
    event = deployment.events.get(action="layout")
    assert event.message == (
        "Partition table of /dev/sda written: 1 'root' 8 MiB at 1 MiB, 2 'home' 54 MiB at 9 MiB."
    )


def test_a_kept_table_keeps_what_other_partitions_hold(machine, deployment):
    kept = DiskContent.objects.create(
        machine=machine, disk="/dev/sda3", version_number=0, written_at=deployment.created_at
    )
    agent = checked_in(machine)
    report_writing(agent, deployment)

    agent.post(
        "/api/agent/result",
        {"state": "done", "written": written(deployment), "layouts": [reported(created=False)]},
        format="json",
    )

    assert DiskContent.objects.filter(pk=kept.pk).exists()
    assert "already there, kept" in deployment.events.get(action="layout").message


@pytest.mark.parametrize(
    ("layouts", "why"),
    [
        ([], "did not report the partition table of /dev/sda"),
        ([reported(root=16 * MIB)], "partition 'root' on /dev/sda is 16777216 bytes"),
        ([{**reported(), "partitions": reported()["partitions"][:1]}], "is not the setup's"),
    ],
)
def test_done_with_another_table_is_failed_and_records_nothing(machine, deployment, layouts, why):
    agent = checked_in(machine)
    report_writing(agent, deployment)

    response = agent.post(
        "/api/agent/result",
        {"state": "done", "written": written(deployment), "layouts": layouts},
        format="json",
    )

    assert response.json() == {"state": "failed"}
    deployment.refresh_from_db()
    assert why in deployment.failure_reason
    assert not DiskContent.objects.filter(machine=machine).exists()


def test_an_image_over_a_whole_disk_forgets_what_its_partitions_held(user_client, user, machine):
    setup = ImageSetupFactory(owner=user)
    image = ImageFactory(owner=user, target_disk="/dev/sda")
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=image, number=0))
    assert queue(user_client, machine, setup).status_code == 201
    deployment = machine_start_next(machine_id=machine.pk)
    for disk in ("/dev/sda2", "/dev/sdb1"):
        DiskContent.objects.create(
            machine=machine,
            disk=disk,
            version_number=0,
            sync=True,
            written_at=deployment.created_at,
        )
    agent = checked_in(machine)
    report_writing(agent, deployment)

    response = agent.post(
        "/api/agent/result", {"state": "done", "written": written(deployment)}, format="json"
    )

    assert response.json() == {"state": "done"}
    disks = DiskContent.objects.filter(machine=machine).values_list("disk", flat=True)
    assert sorted(disks) == ["/dev/sda", "/dev/sdb1"]  # /dev/sda2 was overwritten, not synced
    event = deployment.events.get(action="disks_unknown")
    assert event.message == (
        "What was recorded on /dev/sda2 is forgotten: an image was written over the whole of "
        "/dev/sda."
    )


@pytest.mark.parametrize(
    "partition",
    [{"start": None}, {"size": None}, {"size": -1}, {"start": "zero"}],
)
def test_a_report_without_the_partitions_places_is_failed_not_a_crash(
    machine, deployment, partition
):
    agent = checked_in(machine)
    report_writing(agent, deployment)
    table = reported()
    table["partitions"][1] = {**table["partitions"][1], **partition}

    response = agent.post(
        "/api/agent/result",
        {"state": "done", "written": written(deployment), "layouts": [table]},
        format="json",
    )

    assert response.status_code in (200, 400)
    deployment.refresh_from_db()
    if response.status_code == 200:
        assert response.json() == {"state": "failed"}
        assert "no place on /dev/sda for partition 'home'" in deployment.failure_reason
    assert not DiskContent.objects.filter(machine=machine).exists()
