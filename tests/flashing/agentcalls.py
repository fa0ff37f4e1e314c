"""The agent's side of the API as the tests call it: a machine's boot token and check-in,
and what an agent reports as it writes and brings images back."""

from __future__ import annotations

import re

from rest_framework.test import APIClient

from flashing.models import RUNNING_STATES, Deployment, DeploymentImage
from flashing.services.boot import deployment_boot_again
from flashing.services.pipeline import deployment_power, machine_start_next
from tests.catalogue.factories import ImageFrozenFactory, ImageSetupFactory


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def armed(machine) -> Deployment:
    """The machine's running deployment, its attempt armed and its boot token not handed out.

    As in the lab: BAAS powers the machine on for the attempt (the manual
    driver); once that attempt's token is handed out, a person asks for a
    manual boot, which starts a new attempt.
    """
    deployment = Deployment.objects.get(machine=machine, state__in=RUNNING_STATES)
    if deployment.powered_attempt < deployment.attempt:
        outcome = deployment_power(deployment_id=deployment.pk, attempt=deployment.attempt)
        assert outcome == "powered"
    elif deployment.boot_token_attempt >= deployment.attempt:
        deployment_boot_again(actor=deployment.requested_by, deployment=deployment)
    return Deployment.objects.get(pk=deployment.pk)


def boot_token(machine) -> str:
    """The boot token of a new armed attempt, from the machine's boot script."""
    armed(machine)
    script = APIClient().get(f"/api/boot/{machine.mac}.ipxe").content.decode()
    return re.search(r"baas\.token=(\S+)", script).group(1)


def checked_in(machine) -> APIClient:
    response = bearer(boot_token(machine)).post(
        "/api/agent/checkin", {"mac": machine.mac, "agent_version": "test"}, format="json"
    )
    assert response.status_code == 200, response.content
    return bearer(response.json()["token"])


def written(deployment, sha256=None):
    return [
        {
            "image": str(row.image_id),
            "version": row.version_number,
            "disk": row.disk,
            "sha256": sha256 or row.version.sha256,
        }
        for row in deployment.images.select_related("version")
    ]


def report_writing(agent, deployment) -> None:
    """What the agent reports as it writes: progress for every image it writes."""
    for row in deployment.images.all():
        response = agent.post(
            "/api/agent/progress",
            {
                "image": str(row.image_id),
                "phase": "writing",
                "bytes_done": row.bytes_total,
                "bytes_total": row.bytes_total,
            },
            format="json",
        )
        assert response.status_code == 204, response.content


def bring_back(deployment: Deployment, disk: str) -> DeploymentImage:
    """Have ``deployment`` also bring back the image it writes to ``disk`` (a sync row)."""
    item = deployment.images.get(disk=disk)
    DeploymentImage.objects.create(
        deployment=deployment,
        direction=DeploymentImage.Direction.SYNC,
        image=item.image,
        version=item.version,
        version_number=0,
        disk=disk,
        sync=True,
    )
    return item


def assert_started_then_failed(machine, reason: str) -> None:
    """The deployment starts, its agent asks for instructions: 409, and it failed for ``reason``."""
    deployment = machine_start_next(machine_id=machine.pk)
    answer = checked_in(machine).get("/api/agent/instructions")
    assert answer.status_code == 409
    assert reason in answer.json()["detail"]
    deployment.refresh_from_db()
    assert deployment.state == "failed"
    assert reason in deployment.failure_reason


def queue_setup_of(user_client, user, machine, version) -> None:
    """Ask for ``version`` on ``machine`` as ``user``: a setup of it alone, queued."""
    setup = ImageSetupFactory(owner=user)
    ImageFrozenFactory(setup=setup, version=version)
    response = user_client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )
    assert response.status_code == 201, response.content
