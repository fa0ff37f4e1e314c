"""Deployments: queueing setups on machines, first in first out, and cancelling them."""

from __future__ import annotations

import pytest

from accounts.models import AuditEvent
from catalogue.models import ImageType
from flashing.models import Deployment, DiskContent, MachineState
from flashing.services.deployments import deployment_plan_sync
from flashing.services.states import deployment_set_state
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.factories import MachineDiskFactory, MachineFactory

pytestmark = pytest.mark.django_db


def make_setup(owner, disks=("/dev/sda",), image_type=ImageType.SINGLE, content=None):
    setup = ImageSetupFactory(owner=owner)
    for disk in disks:
        image = ImageFactory(owner=owner, target_disk=disk, type=image_type)
        ImageFrozenFactory(
            setup=setup,
            version=VersionFactory(image=image, number=0, content=content),
            sync=image_type == ImageType.USER_DATA,
        )
    return setup


def queue(client, machine, setup, sync=False):
    return client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid), "sync": sync}, format="json"
    )


def test_the_lease_holder_queues_a_setup(user_client, user, machine):
    setup = make_setup(user, disks=("/dev/sda", "/dev/sdb"))
    response = queue(user_client, machine, setup, sync=True)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["state"], body["setup"], body["sync"], body["requested_by"]) == (
        "queued",
        str(setup.uuid),
        True,
        user.username,
    )
    assert (body["machine"], body["mac"], body["position"]) == (machine.name, machine.mac, 1)
    assert sorted((i["disk"], i["bytes_done"], i["bytes_total"]) for i in body["images"]) == [
        ("/dev/sda", 0, 65536),
        ("/dev/sdb", 0, 65536),
    ]
    assert [e["action"] for e in body["events"]] == ["queued"]
    assert body["events"][0]["actor"] == user.username
    assert AuditEvent.objects.filter(action="deployment.queued", target_id=str(body["id"])).exists()


def test_a_queued_deployment_keeps_the_images_it_was_queued_with(user_client, user, machine):
    setup = make_setup(user)
    deployment_id = queue(user_client, machine, setup).json()["id"]
    setup.frozen_images.all().delete()
    body = user_client.get(f"/api/deployment/{deployment_id}").json()
    assert [i["disk"] for i in body["images"]] == ["/dev/sda"]


def test_without_a_lease_a_user_cannot_deploy(user_client, user):
    response = queue(user_client, MachineFactory(), make_setup(user))
    assert response.status_code == 403
    assert "lease" in response.json()["detail"]


def test_an_administrator_deploys_without_a_lease(admin_client_api, administrator):
    response = queue(admin_client_api, MachineFactory(), make_setup(administrator))
    assert response.status_code == 201


def test_only_setups_the_user_may_use_are_queued(user_client, other_user, machine, moderator):
    for owner in (other_user, moderator):
        response = queue(user_client, machine, make_setup(owner))
        assert response.status_code == 400
        assert "setup" in response.json()["errors"]
    response = user_client.post(
        f"/api/machine/{machine.mac}/boot",
        {"setup": "8d8ac610-566d-4ef0-9c22-186b2a5ed793"},
        format="json",
    )
    assert response.status_code == 400
    assert not Deployment.objects.exists()


def test_an_empty_setup_is_not_queued(user_client, user, machine):
    response = queue(user_client, machine, ImageSetupFactory(owner=user))
    assert response.status_code == 400
    assert "no images" in response.json()["detail"]


def test_a_setup_must_fit_the_machines_disks(user_client, user, machine):
    MachineDiskFactory(machine=machine, path="/dev/sda", size=1000)
    response = queue(user_client, machine, make_setup(user, disks=("/dev/sdb",)))
    assert response.status_code == 400
    assert "/dev/sdb" in response.json()["detail"]
    response = queue(user_client, machine, make_setup(user))  # 64 KiB onto 1000 bytes
    assert response.status_code == 400
    assert "does not fit" in response.json()["detail"]


def test_an_image_the_owner_may_no_longer_read_is_not_flashed(
    user_client, user, machine, administrator
):
    system = ImageFactory(owner=administrator, type=ImageType.SYSTEM)
    setup = ImageSetupFactory(owner=user)
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=system, number=0))
    system.type = ImageType.SINGLE  # made private after it was pinned
    system.save()
    assert queue(user_client, machine, setup).status_code == 409


@pytest.mark.parametrize("state", [MachineState.MAINTENANCE, MachineState.ERROR])
def test_a_machine_out_of_service_is_not_deployed(admin_client_api, administrator, state):
    machine = MachineFactory(state=state)
    assert queue(admin_client_api, machine, make_setup(administrator)).status_code == 409


def test_an_unmanaged_machine_is_not_deployed(admin_client_api, administrator):
    machine = MachineFactory(managed=False)
    response = queue(admin_client_api, machine, make_setup(administrator))
    assert response.status_code == 409
    assert "not managed" in response.json()["detail"]


def test_the_queue_is_first_in_first_out(user_client, user, machine):
    ids = [queue(user_client, machine, make_setup(user)).json()["id"] for _ in range(3)]
    next_one = user_client.get(f"/api/machine/{machine.mac}/boot")
    assert next_one.json()["id"] == ids[0]
    positions = {
        d["id"]: d["position"]
        for d in user_client.get(f"/api/deployments?machine={machine.mac}").json()["results"]
    }
    assert positions == {ids[0]: 1, ids[1]: 2, ids[2]: 3}
    user_client.post(f"/api/deployment/{ids[0]}/cancel")
    assert user_client.get(f"/api/machine/{machine.mac}/boot").json()["id"] == ids[1]
    assert user_client.get(f"/api/deployment/{ids[2]}").json()["position"] == 2


def test_the_queue_ignores_deployments_of_other_machines_and_running_ones(
    admin_client_api, administrator
):
    first, second = MachineFactory(), MachineFactory()
    setup = make_setup(administrator)
    a = queue(admin_client_api, first, setup).json()["id"]
    b = queue(admin_client_api, second, setup).json()["id"]
    c = queue(admin_client_api, first, setup).json()["id"]
    assert admin_client_api.get(f"/api/machine/{second.mac}/boot").json()["id"] == b
    deployment_set_state(actor=None, deployment=Deployment.objects.get(pk=a), state="booting")
    assert admin_client_api.get(f"/api/machine/{first.mac}/boot").json()["id"] == c


def test_an_empty_queue_answers_204(user_client, machine):
    assert user_client.get(f"/api/machine/{machine.mac}/boot").status_code == 204


def test_only_the_lease_holder_or_an_administrator_sees_the_queue(
    other_client, admin_client_api, machine
):
    assert other_client.get(f"/api/machine/{machine.mac}/boot").status_code == 403
    assert admin_client_api.get(f"/api/machine/{machine.mac}/boot").status_code == 204


def test_a_queued_deployment_is_cancelled_by_its_requester(user_client, user, machine):
    deployment_id = queue(user_client, machine, make_setup(user)).json()["id"]
    response = user_client.post(f"/api/deployment/{deployment_id}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert (body["state"], body["position"]) == ("cancelled", None)
    assert body["finished_at"] is not None
    assert [e["action"] for e in body["events"]] == ["queued", "cancelled"]


def test_a_finished_deployment_is_not_cancelled(user_client, user, machine):
    deployment_id = queue(user_client, machine, make_setup(user)).json()["id"]
    deployment = Deployment.objects.get(pk=deployment_id)
    deployment_set_state(actor=None, deployment=deployment, state="booting")
    deployment_set_state(actor=None, deployment=deployment, state="failed", message="no PXE")
    response = user_client.post(f"/api/deployment/{deployment_id}/cancel")
    assert response.status_code == 409
    assert response.json()["detail"] == f"Deployment #{deployment_id} is failed already."
    assert Deployment.objects.get(pk=deployment_id).state == "failed"


def test_others_deployments_are_404(user_client, other_client, admin_client_api, user, machine):
    deployment_id = queue(user_client, machine, make_setup(user)).json()["id"]
    assert other_client.get(f"/api/deployment/{deployment_id}").status_code == 404
    assert other_client.post(f"/api/deployment/{deployment_id}/cancel").status_code == 404
    assert Deployment.objects.get(pk=deployment_id).state == "queued"
    assert admin_client_api.get(f"/api/deployment/{deployment_id}").status_code == 200
    assert other_client.get("/api/deployment/999999").status_code == 404


def test_the_list_is_mine_and_everyones_for_administrators(
    user_client, other_client, admin_client_api, user, administrator, machine
):
    mine = queue(user_client, machine, make_setup(user)).json()["id"]
    theirs = queue(admin_client_api, MachineFactory(), make_setup(administrator)).json()["id"]
    assert [d["id"] for d in user_client.get("/api/deployments").json()["results"]] == [mine]
    assert other_client.get("/api/deployments").json()["results"] == []
    assert [d["id"] for d in admin_client_api.get("/api/deployments").json()["results"]] == [
        theirs,
        mine,
    ]
    listing = admin_client_api.get("/api/deployments?state=cancelled").json()["results"]
    assert listing == []


def test_listing_deployments_takes_the_same_queries_for_one_or_many(
    admin_client_api, administrator, django_assert_num_queries
):
    admin_client_api.get("/api/deployments")  # the token's first use records it
    for _ in range(4):
        queue(
            admin_client_api,
            MachineFactory(),
            make_setup(administrator, disks=("/dev/sda", "/dev/sdb")),
        )
    # token+user, the count, deployments with machine/setup/requester/position, MACs, images
    with django_assert_num_queries(5):
        response = admin_client_api.get("/api/deployments")
    assert len(response.json()) == 4
    assert all(len(d["images"]) == 2 and d["mac"] for d in response.json()["results"])


# --- The hooks the flashing pipeline calls -------------------------------------------------


def test_a_running_deployment_marks_the_machine_deploying_and_done_records_the_disks(
    user_client, user, machine
):
    setup = make_setup(user, disks=("/dev/sda",))
    deployment = Deployment.objects.get(pk=queue(user_client, machine, setup).json()["id"])
    for state in ("booting", "writing"):
        deployment_set_state(actor=None, deployment=deployment, state=state)
    machine.refresh_from_db()
    assert machine.state == MachineState.DEPLOYING
    for state in ("verifying", "done"):
        deployment_set_state(actor=None, deployment=deployment, state=state)
    machine.refresh_from_db()
    assert machine.state == MachineState.LEASED
    on_disk = machine.disk_contents.get()
    assert (on_disk.disk, on_disk.image_id) == ("/dev/sda", setup.frozen_images.get().image_id)
    body = user_client.get(f"/api/machine/{machine.mac}").json()
    assert body["disk_contents"][0]["version"] == 0
    log = user_client.get(f"/api/deployment/{deployment.pk}").json()["events"]
    assert [e["action"] for e in log] == ["queued", "booting", "writing", "verifying", "done"]


def test_a_failed_deployment_says_why(user_client, user, machine):
    deployment = Deployment.objects.get(
        pk=queue(user_client, machine, make_setup(user)).json()["id"]
    )
    deployment_set_state(actor=None, deployment=deployment, state="booting")
    deployment_set_state(actor=None, deployment=deployment, state="failed", message="no PXE")
    body = user_client.get(f"/api/deployment/{deployment.pk}").json()
    assert (body["state"], body["failure_reason"]) == ("failed", "no PXE")


def test_a_deployment_cannot_skip_its_states(user_client, user, machine):
    deployment = Deployment.objects.get(
        pk=queue(user_client, machine, make_setup(user)).json()["id"]
    )
    from flashing.services.common import Conflict

    with pytest.raises(Conflict):
        deployment_set_state(actor=None, deployment=deployment, state="done")


def test_sync_plans_the_user_data_on_the_disks_when_it_starts(user_client, user, machine):
    data = VersionFactory(image=ImageFactory(owner=user, type=ImageType.USER_DATA))
    DiskContent.objects.create(
        machine=machine,
        disk="/dev/sdb",
        image=data.image,
        version=data,
        version_number=0,
        sync=True,
        written_at=machine.created_at,
    )
    deployment = Deployment.objects.get(
        pk=queue(user_client, machine, make_setup(user), sync=True).json()["id"]
    )
    deployment_plan_sync(deployment=deployment)
    deployment_plan_sync(deployment=deployment)  # idempotent
    synced = deployment.images.filter(direction="sync").get()
    assert (synced.image_id, synced.disk, synced.version_number) == (data.image_id, "/dev/sdb", 0)
