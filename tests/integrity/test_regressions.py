"""The failures the lifecycle model found, each as the straight-line sequence it shrank to.

Same world as the model (``world.World``: ann and bob, the administrator root, machine
m0 with the ``manual`` power driver and m1 with the ``command`` one, each person's
setups ``system``, ``system+data`` and ``system+mount``), same hands: HTTP with real
tokens, the worker when a step says so.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from catalogue.storage import get_storage
from flashing import nbd
from flashing.models import Deployment, DeploymentState, NetworkMount
from tests.integrity.world import (
    DEPLOYMENT,
    TOKEN,
    World,
    after_commit,
    bearer,
    content,
    run_pending_jobs,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tmp_path, settings):
    settings.BAAS_DEPLOY_RETRIES = 1
    settings.BAAS_PUBLIC_URL = "http://baas.test"
    settings.BAAS_NBD_DIR = tmp_path / "nbd"
    with after_commit():
        world = World(token_file=tmp_path / "power-tokens")
    yield world
    # The worker runs every queue: a mount it started serves from a qemu-nbd of its own,
    # which the rolled-back test would leave running (and holding its port).
    for mount in NetworkMount.objects.exclude(pid=None):
        nbd.server_stop(pid=mount.pid, overlay=Path(mount.directory) / nbd.OVERLAY)


def call(world: World, who: str | None, method: str, url: str, body=None, secret=None):
    """A request by a person (their personal token), or with an agent's ``secret``."""
    client = world.people[who].client if who else bearer(secret)
    with after_commit():
        return getattr(client, method)(url, body, format="json")


def lease_and_flash(world: World, who: str, box: str, kind: str = "system") -> Deployment:
    """``who`` leases ``box`` and queues their setup ``kind``; the worker starts it."""
    mac = world.boxes[box].mac
    assert call(world, who, "post", f"/api/machine/{mac}/lease", {"hours": 2}).status_code == 201
    setup = world.setups[(who, kind)]
    body = {"setup": str(setup.uuid), "sync": True}
    response = call(world, who, "post", f"/api/machine/{mac}/boot", body)
    assert response.status_code == 201, response.content
    run_pending_jobs()
    deployment = Deployment.objects.get(pk=response.json()["id"])
    assert deployment.state == DeploymentState.BOOTING
    return deployment


def boot_script(world: World, box: str) -> str:
    response = call(world, None, "get", f"/api/boot/{world.boxes[box].mac}.ipxe")
    assert response.status_code == 200
    return response.content.decode()


def token_of(script: str) -> str | None:
    found = TOKEN.search(script)
    return found.group(1) if found else None


def check_in(world: World, box: str, boot_secret: str):
    body = {"mac": world.boxes[box].mac, "agent_version": "regression"}
    return call(world, None, "post", "/api/agent/checkin", body, secret=boot_secret)


# --- Leases and deployments -----------------------------------------------------------


def test_a_lessee_cancels_a_deployment_that_is_booting(world):
    deployment = lease_and_flash(world, "ann", "m1")

    response = call(world, "ann", "post", f"/api/deployment/{deployment.pk}/cancel")

    assert response.status_code == 200, response.content
    assert response.json()["state"] == "cancelled"


def test_releasing_a_lease_cancels_its_booting_deployment(world):
    deployment = lease_and_flash(world, "ann", "m0")

    response = call(world, "ann", "delete", f"/api/machine/{world.boxes['m0'].mac}/lease")

    assert response.status_code == 204
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.CANCELLED


def test_the_next_lessee_s_machine_never_boots_the_previous_lease_s_deployment(world):
    lease_and_flash(world, "ann", "m0", "system+data")
    mac = world.boxes["m0"].mac
    assert call(world, "ann", "delete", f"/api/machine/{mac}/lease").status_code == 204
    assert call(world, "bob", "post", f"/api/machine/{mac}/lease", {"hours": 1}).status_code == 201

    script = boot_script(world, "m0")

    assert token_of(script) is None, script
    assert not DEPLOYMENT.search(script), script


def test_a_boot_token_dies_with_its_lease_and_changes_nothing(world):
    deployment = lease_and_flash(world, "ann", "m0")
    boot_secret = token_of(boot_script(world, "m0"))
    assert (
        call(world, "ann", "delete", f"/api/machine/{world.boxes['m0'].mac}/lease").status_code
        == 204
    )
    deployment.refresh_from_db()
    events = deployment.events.count()

    response = check_in(world, "m0", boot_secret)

    assert response.status_code in (401, 410), response.content
    deployment.refresh_from_db()
    assert deployment.checked_in_at is None and deployment.events.count() == events


def test_the_agent_of_a_finished_deployment_is_told_it_is_gone(world):
    deployment = lease_and_flash(world, "ann", "m0")
    checked_in = check_in(world, "m0", token_of(boot_script(world, "m0")))
    agent = checked_in.json()["token"]
    body = {"state": "failed", "written": [], "synced": [], "reason": "The disk did not answer."}
    assert call(world, None, "post", "/api/agent/result", body, secret=agent).status_code == 200

    response = call(world, None, "get", "/api/agent/instructions", secret=agent)

    assert response.status_code == 410, response.content
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.FAILED


# --- One boot attempt, one token, one agent ------------------------------------------------


def test_a_second_boot_script_of_the_same_attempt_carries_no_token(world):
    lease_and_flash(world, "ann", "m0")
    first = boot_script(world, "m0")

    second = boot_script(world, "m0")

    assert token_of(first) is not None
    assert token_of(second) is None, second


def test_a_second_check_in_for_the_same_attempt_is_refused(world):
    deployment = lease_and_flash(world, "ann", "m0")
    secrets = [token_of(boot_script(world, "m0")) for _ in range(2)]
    assert check_in(world, "m0", secrets[0]).status_code == 200

    second = check_in(world, "m0", secrets[1]) if secrets[1] else None

    assert second is None or second.status_code in (401, 409), second.content
    assert deployment.events.filter(action="checked_in").count() == 1


def test_only_the_agent_bound_to_the_attempt_gets_instructions_and_bytes(world):
    lease_and_flash(world, "ann", "m0")
    secrets = [token_of(boot_script(world, "m0")) for _ in range(2)]
    assert check_in(world, "m0", secrets[0]).status_code == 200
    second = check_in(world, "m0", secrets[1]) if secrets[1] else None
    intruder = second.json()["token"] if second and second.status_code == 200 else None

    image = world.images[("ann", "system")]
    urls = ("/api/agent/instructions", f"/api/image/{image.uuid}/0")
    answers = [call(world, None, "get", url, secret=intruder).status_code for url in urls]

    assert intruder is None or 200 not in answers, answers


# --- Network mounts next to flashed images -----------------------------------------------


# A crashed download leaves its file open: collected here, not in a later test.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_agent_of_a_setup_with_a_network_mount_downloads_its_flashed_image(world):
    lease_and_flash(world, "ann", "m0", "system+mount")
    agent = check_in(world, "m0", token_of(boot_script(world, "m0"))).json()["token"]
    instructions = call(world, None, "get", "/api/agent/instructions", secret=agent).json()
    write = instructions["write"][0]

    answers = [
        call(world, None, "get", url, secret=agent) for url in (write["map_url"], write["url"])
    ]
    for response in answers:
        if response.streaming:
            b"".join(response.streaming_content)
    gc.collect()

    assert [response.status_code for response in answers] == [200, 200]


# --- Versions ------------------------------------------------------------------------------


def test_a_file_left_by_a_crash_does_not_make_the_next_version_skip_a_number(world):
    image = world.images[("ann", "system")]
    get_storage().version_path(image.uuid, 1, "none").write_bytes(b"half an image")

    with after_commit():
        response = world.people["ann"].client.post(
            f"/api/image/{image.uuid}", content(99), content_type="application/octet-stream"
        )

    assert response.status_code == 201, response.content
    assert response.json()["number"] == 1
    path = get_storage().version_path(image.uuid, 1, "none")
    assert path.read_bytes() == content(99)
