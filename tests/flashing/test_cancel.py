"""Cancelling a deployment in any state, and leases that end taking their deployments along.

A deployment is driven as the pipeline and the agent drive it: started, powered
by the ``command`` driver (which hands the boot token to a shell command), then
checked in and reported on over HTTP with the agent's own token.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from flashing.models import Deployment, DiskContent, MachineState
from flashing.services.leases import leases_expire
from flashing.services.pipeline import deployment_power, machine_advance, machine_start_next
from tests.flashing.factories import LeaseFactory, MachineDiskFactory, MachineFactory
from tests.flashing.test_deployments import make_setup, queue

pytestmark = pytest.mark.django_db
GONE = (401, 410)  # a dead agent token: refused, whichever way it is told


@pytest.fixture
def machine(user, tmp_path):
    env, off = tmp_path / "env", tmp_path / "off"
    machine = MachineFactory(
        state=MachineState.LEASED,
        power_driver="command",
        power_settings={
            "command": f"env | grep ^BAAS_ | sort > {env}",
            "off_command": f"touch {off}",
        },
    )
    MachineDiskFactory(machine=machine, path="/dev/sda", size=2**30)
    machine.env_file, machine.off_file = env, off
    LeaseFactory(machine=machine, user=user)
    return machine


def start(client, machine, user) -> tuple[Deployment, APIClient]:
    """Queue, start and power a deployment; check its agent in. Returns it and the agent."""
    deployment = Deployment.objects.get(pk=queue(client, machine, make_setup(user)).json()["id"])
    assert machine_start_next(machine_id=machine.pk).pk == deployment.pk
    assert deployment_power(deployment_id=deployment.pk, attempt=1) == "powered"
    env = dict(line.split("=", 1) for line in machine.env_file.read_text().splitlines())
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {env['BAAS_TOKEN']}")
    answer = agent.post("/api/agent/checkin", {"mac": machine.mac}, format="json")
    assert answer.status_code == 200, answer.content
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {answer.json()['token']}")
    return deployment, agent


def report(agent, deployment, phase: str, done: int = 4096):
    image = deployment.images.get().image_id
    body = {"image": str(image), "phase": phase, "bytes_done": done, "bytes_total": 65536}
    return agent.post("/api/agent/progress", body, format="json")


def drive(agent, deployment, state: str) -> None:
    """Have the agent bring the deployment to ``state`` (booting: nothing to do)."""
    if state != "booting":
        assert report(agent, deployment, state).status_code == 204
    deployment.refresh_from_db()
    assert deployment.state == state


@pytest.mark.parametrize("state", ["booting", "writing", "verifying"])
def test_a_running_deployment_is_cancelled_and_its_agent_can_do_nothing_more(
    user_client, user, machine, state
):
    deployment, agent = start(user_client, machine, user)
    drive(agent, deployment, state)

    response = user_client.post(f"/api/deployment/{deployment.pk}/cancel")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["state"], body["failure_reason"]) == ("cancelled", f"Cancelled by {user}.")
    assert body["finished_at"] is not None
    events = deployment.events.count()
    assert report(agent, deployment, "writing", done=60000).status_code in GONE
    assert agent.get("/api/agent/instructions").status_code in GONE
    result = agent.post("/api/agent/result", {"state": "done"}, format="json")
    assert result.status_code in GONE
    deployment.refresh_from_db()
    assert (deployment.state, deployment.events.count()) == ("cancelled", events)
    assert deployment.images.get().bytes_done < 60000
    machine.refresh_from_db()
    assert machine.state == MachineState.LEASED


def test_a_cancelled_machine_is_powered_off_once(user_client, user, machine):
    deployment, _ = start(user_client, machine, user)
    user_client.post(f"/api/deployment/{deployment.pk}/cancel")

    assert machine_advance(machine_id=machine.pk) == "off"
    assert machine.off_file.exists()
    machine.off_file.unlink()
    assert machine_advance(machine_id=machine.pk) == "idle"
    assert not machine.off_file.exists()
    assert list(deployment.events.filter(action="power_off").values_list("state", flat=True)) == [
        "cancelled"
    ]


def test_a_cancelled_machine_goes_on_with_its_next_deployment_rather_than_off(
    user_client, user, machine
):
    deployment, _ = start(user_client, machine, user)
    following = queue(user_client, machine, make_setup(user)).json()["id"]
    user_client.post(f"/api/deployment/{deployment.pk}/cancel")

    assert machine_advance(machine_id=machine.pk) == "started"
    assert Deployment.objects.get(pk=following).state == "booting"
    assert not machine.off_file.exists()


def test_the_manual_driver_tells_a_person_to_power_the_machine_off(user_client, user, machine):
    deployment, _ = start(user_client, machine, user)
    machine.power_driver = "manual"
    machine.save()
    user_client.post(f"/api/deployment/{deployment.pk}/cancel")

    machine_advance(machine_id=machine.pk)

    event = deployment.events.get(action="power_off")
    assert event.message == f"Waiting for a person to power {machine.name} off."


def _disk_content(machine, deployment):
    row = deployment.images.get()
    return DiskContent.objects.create(
        machine=machine,
        disk="/dev/sda",
        image_id=row.image_id,
        version_id=row.version_id,
        version_number=row.version_number,
        written_at=timezone.now(),
    )


def test_a_flash_cancelled_once_writing_began_leaves_its_disk_unknown(user_client, user, machine):
    deployment, agent = start(user_client, machine, user)
    _disk_content(machine, deployment)
    drive(agent, deployment, "writing")

    user_client.post(f"/api/deployment/{deployment.pk}/cancel")

    assert not DiskContent.objects.filter(machine=machine).exists()
    assert deployment.events.filter(action="disks_unknown").exists()


def test_a_flash_cancelled_before_writing_leaves_the_disk_as_it_was(user_client, user, machine):
    deployment, _ = start(user_client, machine, user)
    kept = _disk_content(machine, deployment)

    user_client.post(f"/api/deployment/{deployment.pk}/cancel")

    assert DiskContent.objects.get(machine=machine).pk == kept.pk


def test_a_released_lease_takes_its_running_deployment_along(
    user_client, other_client, user, other_user, machine
):
    deployment, agent = start(user_client, machine, user)
    drive(agent, deployment, "writing")

    assert user_client.delete(f"/api/machine/{machine.mac}/lease").status_code in (200, 204)

    deployment.refresh_from_db()
    assert deployment.state == "cancelled"
    assert deployment.failure_reason == f"{user}'s lease ended (released)."
    assert report(agent, deployment, "writing").status_code in GONE
    # The next user leases the machine: it boots nothing of the previous deployment.
    lease = other_client.post(f"/api/machine/{machine.mac}/lease", {"hours": 1}, format="json")
    assert lease.status_code == 201, lease.content
    script = APIClient().get(f"/api/boot/{machine.mac}.ipxe").content.decode()
    assert "sanboot" in script and "baas.token" not in script
    assert f"deployment #{deployment.pk}" not in script


def test_an_expired_lease_takes_its_running_deployment_along(user_client, user, machine):
    deployment, agent = start(user_client, machine, user)

    assert leases_expire(now=timezone.now() + timedelta(days=30)) == 1

    deployment.refresh_from_db()
    assert (deployment.state, deployment.failure_reason) == (
        "cancelled",
        f"{user}'s lease ended (expired).",
    )
    assert agent.get("/api/agent/instructions").status_code in GONE
    machine.refresh_from_db()
    assert machine.state == MachineState.AVAILABLE


def test_the_deployment_page_offers_cancel_while_it_runs(client, user, user_client, machine):
    deployment, _ = start(user_client, machine, user)
    client.force_login(user)

    page = client.get(f"/deployments/{deployment.pk}/").content.decode()

    assert 'id="cancel-form"' in page
    client.post(f"/deployments/{deployment.pk}/cancel")
    assert Deployment.objects.get(pk=deployment.pk).state == "cancelled"
    assert 'id="cancel-form"' not in client.get(f"/deployments/{deployment.pk}/").content.decode()


def test_the_deployment_page_offers_a_manual_boot_while_it_runs(client, user, user_client, machine):
    deployment, agent = start(user_client, machine, user)
    client.force_login(user)
    assert 'id="boot-again-form"' in client.get(f"/deployments/{deployment.pk}/").content.decode()

    response = client.post(f"/deployments/{deployment.pk}/boot-again", follow=True)

    assert f"Attempt 2 is armed: boot {machine.name}" in response.content.decode()
    deployment.refresh_from_db()
    assert (deployment.state, deployment.attempt) == ("booting", 2)
    assert agent.get("/api/agent/instructions").status_code in GONE  # the old attempt's agent
    user_client.post(f"/api/deployment/{deployment.pk}/cancel")
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="boot-again-form"' not in page
