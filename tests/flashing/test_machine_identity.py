"""A machine's identity (docs/security.md): one boot token per boot attempt, one check-in
per attempt, agent tokens that report only for their own running attempt, results that
match what the agent did, and bounded records of unknown MACs."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from catalogue.models import ImageType, Mount
from catalogue.services.datamaps import version_map_build
from catalogue.services.setups import setup_image_add
from flashing.models import (
    AgentToken,
    Deployment,
    DiskContent,
    MachineState,
    UnknownMac,
)
from flashing.services.deployments import deployment_enqueue
from flashing.services.pipeline import (
    deployment_power,
    deployment_retry_or_fail,
    machine_start_next,
)
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, write_version
from tests.flashing.agentcalls import (
    armed,
    bearer,
    bring_back,
    checked_in,
    report_writing,
    written,
)
from tests.flashing.factories import LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(user, machine):
    """A started deployment of two images (``/dev/sda``, ``/dev/sdb``), not powered yet."""
    setup = ImageSetupFactory(owner=user)
    for disk, content in (("/dev/sda", b"system" * 5000), ("/dev/sdb", b"data" * 4000)):
        version = write_version(ImageFactory(owner=user, target_disk=disk), 0, content)
        setup_image_add(actor=user, setup=setup, image=version.image, version_number=0)
    deployment_enqueue(actor=user, machine=machine, setup=setup)
    return machine_start_next(machine_id=machine.pk)


TOKEN_RE = re.compile(r"baas\.token=(\S+)")


def fetch_script(machine, ip: str = "127.0.0.1") -> str:
    response = APIClient().get(f"/api/boot/{machine.mac}.ipxe", REMOTE_ADDR=ip)
    assert response.status_code == 200
    return response.content.decode()


def token_in(script: str) -> str | None:
    found = TOKEN_RE.search(script)
    return found.group(1) if found else None


def check_in(secret: str, machine, ip: str = "127.0.0.1"):
    return bearer(secret).post(
        "/api/agent/checkin", {"mac": machine.mac, "agent_version": "test"}, REMOTE_ADDR=ip
    )


# --- One boot token per attempt ---------------------------------------------------------------


def test_only_the_first_boot_script_of_an_attempt_carries_a_token(machine, deployment):
    armed(machine)
    first = fetch_script(machine, ip="10.0.0.5")
    assert token_in(first) and "kernel " in first
    second = fetch_script(machine, ip="10.0.0.66")
    assert token_in(second) is None and "kernel " not in second
    assert "sanboot --no-describe --drive 0x80" in second
    assert "boot token of attempt 1 was handed out already" in second
    assert AgentToken.objects.filter(deployment=deployment, kind="boot").count() == 1
    refused = deployment.events.get(action="boot_refused")
    assert "10.0.0.66" in refused.message and "local disk" in refused.message
    handed = deployment.events.get(action="boot_script")
    assert "10.0.0.5" in handed.message


def test_refused_fetches_are_recorded_boundedly(machine, deployment):
    armed(machine)
    assert token_in(fetch_script(machine))
    for n in range(30):
        assert token_in(fetch_script(machine, ip=f"10.0.1.{n}")) is None
    refused = deployment.events.filter(action="boot_refused").order_by("id")
    assert refused.count() == 5 and "from 10.0.1.0," in refused.first().message


def test_a_boot_script_before_the_attempt_is_armed_carries_no_token(machine, deployment):
    script = fetch_script(machine)  # started, but BAAS has not powered the machine yet
    assert token_in(script) is None and "sanboot" in script
    assert "attempt 1 is not armed yet" in script
    assert not AgentToken.objects.filter(deployment=deployment).exists()
    armed(machine)
    assert token_in(fetch_script(machine))


def test_a_power_driver_that_takes_the_token_leaves_none_for_the_boot_script(
    machine, deployment, tmp_path
):
    machine.power_driver = "command"
    machine.power_settings = {"command": f"env | grep ^BAAS_TOKEN > {tmp_path / 'env'}"}
    machine.save()
    assert deployment_power(deployment_id=deployment.pk, attempt=1) == "powered"
    secret = (tmp_path / "env").read_text().strip().split("=", 1)[1]
    assert token_in(fetch_script(machine)) is None
    assert check_in(secret, machine).status_code == 200


def test_the_watchdogs_retry_hands_out_a_new_token_and_ends_the_old_agent(machine, deployment):
    old_agent = checked_in(machine)
    assert deployment_retry_or_fail(deployment_id=deployment.pk, attempt=1, reason="silent") == (
        "retried"
    )
    assert token_in(fetch_script(machine)) is None  # attempt 2 is not powered on yet
    assert deployment_power(deployment_id=deployment.pk, attempt=2) == "powered"
    new_token = token_in(fetch_script(machine))
    assert new_token and token_in(fetch_script(machine)) is None
    assert old_agent.get("/api/agent/instructions").status_code == 401
    assert check_in(new_token, machine).status_code == 200


# --- A manual boot ----------------------------------------------------------------------------


def test_the_lessee_asks_for_a_manual_boot_which_starts_an_armed_attempt(
    machine, deployment, user, administrator
):
    old_agent = checked_in(machine)
    assert token_in(fetch_script(machine)) is None
    # The lessee, who did not request this deployment (an administrator did).
    Deployment.objects.filter(pk=deployment.pk).update(requested_by=administrator)
    lessee = APIClient()
    lessee.force_authenticate(user)
    response = lessee.post(f"/api/deployment/{deployment.pk}/boot-again")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["state"], body["attempt"]) == ("booting", 2)
    assert "boot" in body["detail"]
    assert token_in(fetch_script(machine))
    assert token_in(fetch_script(machine)) is None
    assert old_agent.get("/api/agent/instructions").status_code == 401
    event = deployment.events.get(action="boot_again")
    assert event.actor == user and "attempt 2 is armed" in event.message


def test_only_the_requester_the_lessee_or_an_administrator_may_boot_it_again(
    machine, deployment, other_client, admin_client_api
):
    assert other_client.post(f"/api/deployment/{deployment.pk}/boot-again").status_code == 404
    assert APIClient().post(f"/api/deployment/{deployment.pk}/boot-again").status_code == 401
    assert admin_client_api.post(f"/api/deployment/{deployment.pk}/boot-again").status_code == 200


def test_whoever_leases_the_machine_now_cannot_boot_a_deployment_of_no_lease_of_theirs(
    machine, deployment, user, administrator
):
    # A reset (BAAS's own, bringing the previous user's data back) belongs to no lease:
    # its boot token must not reach the next user through a manual boot.
    Deployment.objects.filter(pk=deployment.pk).update(requested_by=None, lease=None)
    lessee = APIClient()
    lessee.force_authenticate(user)
    assert lessee.post(f"/api/deployment/{deployment.pk}/boot-again").status_code == 404
    assert not deployment.events.filter(action="boot_again").exists()


def test_a_finished_deployment_cannot_be_booted_again(machine, deployment, user_client):
    agent = checked_in(machine)
    agent.post("/api/agent/result", {"state": "failed", "reason": "disk on fire"}, format="json")
    response = user_client.post(f"/api/deployment/{deployment.pk}/boot-again")
    assert response.status_code == 409 and "only a running deployment" in response.json()["detail"]


# --- One check-in per attempt -----------------------------------------------------------------


def test_it_refuses_a_second_checkin_and_records_it(machine, deployment, user_client):
    armed(machine)
    secret = token_in(fetch_script(machine))
    first = check_in(secret, machine, ip="10.0.0.5")
    assert first.status_code == 200
    again = check_in(secret, machine, ip="10.0.0.66")
    assert again.status_code == 409
    assert "bound to the agent that checked in first" in again.json()["detail"]
    events = user_client.get(f"/api/deployment/{deployment.pk}").json()["events"]
    refused = [e for e in events if e["action"] == "checkin_refused"]
    assert len(refused) == 1 and "10.0.0.66" in refused[0]["message"]
    audit = AuditEvent.objects.get(action="deployment.checkin_refused")
    assert (audit.target_id, audit.data["address"]) == (str(deployment.pk), "10.0.0.66")
    # The agent that checked in first goes on.
    agent = bearer(first.json()["token"])
    assert agent.get("/api/agent/instructions").status_code == 200


def test_a_check_in_with_another_machines_mac_is_refused_and_recorded(machine, deployment):
    armed(machine)
    secret = token_in(fetch_script(machine))
    response = bearer(secret).post(
        "/api/agent/checkin", {"mac": "52:54:00:ff:ff:ff"}, REMOTE_ADDR="10.0.0.9"
    )
    assert response.status_code == 403
    refused = deployment.events.get(action="checkin_refused")
    assert "10.0.0.9" in refused.message and "52:54:00:ff:ff:ff" in refused.message
    assert check_in(secret, machine).status_code == 200  # the machine itself still can


# --- Agent tokens ----------------------------------------------------------------------------


def test_an_agent_token_of_a_finished_deployment_is_gone(machine, deployment):
    agent = checked_in(machine)
    agent.post("/api/agent/result", {"state": "failed", "reason": "disk on fire"}, format="json")
    for response in (
        agent.get("/api/agent/instructions"),
        agent.post("/api/agent/result", {"state": "done"}, format="json"),
        agent.post("/api/log", {"lines": ["still here"]}, format="json"),
    ):
        assert response.status_code == 410
        assert response.json() == {
            "detail": f"Deployment #{deployment.pk} is failed: there is nothing more to do "
            "for it; stop."
        }
    deployment.refresh_from_db()
    assert deployment.state == "failed" and not deployment.events.filter(action="agent").exists()


def test_an_unknown_or_older_attempts_token_is_unauthorised(machine, deployment):
    agent = checked_in(machine)
    armed(machine)  # a manual boot: attempt 2
    assert agent.get("/api/agent/instructions").status_code == 401
    assert bearer("baasagent_" + "x" * 43).get("/api/agent/instructions").status_code == 401


def test_an_agent_reports_only_for_its_own_deployment(machine, deployment, user):
    other_machine = MachineFactory(state=MachineState.LEASED)
    LeaseFactory(machine=other_machine, user=user)
    other_setup = ImageSetupFactory(owner=user)
    image = ImageFactory(owner=user, target_disk="/dev/sda")
    write_version(image, 0, b"other" * 1000)
    setup_image_add(actor=user, setup=other_setup, image=image, version_number=0)
    theirs = deployment_enqueue(actor=user, machine=other_machine, setup=other_setup)
    mine = checked_in(machine)
    response = mine.post(
        "/api/agent/progress",
        {"image": str(image.pk), "phase": "writing", "bytes_done": 1, "bytes_total": 5000},
        format="json",
    )
    assert response.status_code == 400
    assert mine.get(f"/api/image/{image.pk}/0").status_code == 404
    theirs.refresh_from_db()
    assert theirs.state == "queued"


# --- Results that match what the agent did ---------------------------------------------------


def test_done_while_booting_is_refused_and_changes_nothing(machine, deployment):
    agent = checked_in(machine)
    response = agent.post(
        "/api/agent/result", {"state": "done", "written": written(deployment)}, format="json"
    )
    assert response.status_code == 409 and "still booting" in response.json()["detail"]
    deployment.refresh_from_db()
    assert deployment.state == "booting"
    assert not DiskContent.objects.filter(machine=machine).exists()


def test_done_without_progress_for_an_image_written_is_refused(machine, deployment):
    agent = checked_in(machine)
    first = deployment.images.order_by("id").first()
    agent.post(
        "/api/agent/progress",
        {"image": str(first.image_id), "phase": "writing", "bytes_done": 1, "bytes_total": 2},
        format="json",
    )
    response = agent.post(
        "/api/agent/result", {"state": "done", "written": written(deployment)}, format="json"
    )
    assert response.status_code == 409 and "no progress writing" in response.json()["detail"]
    deployment.refresh_from_db()
    assert deployment.state == "writing"
    assert not DiskContent.objects.filter(machine=machine).exists()


def test_done_with_an_image_it_was_not_told_to_write_is_failed(machine, deployment, user):
    agent = checked_in(machine)
    report_writing(agent, deployment)
    extra = write_version(ImageFactory(owner=user, target_disk="/dev/sdc"), 0, b"x" * 100)
    planted = {"image": str(extra.image_id), "version": 0, "disk": "/dev/sdc", "sha256": "a" * 64}
    response = agent.post(
        "/api/agent/result",
        {"state": "done", "written": [*written(deployment), planted]},
        format="json",
    )
    assert response.json() == {"state": "failed"}
    deployment.refresh_from_db()
    assert "which it was not told to write" in deployment.failure_reason
    assert not DiskContent.objects.filter(machine=machine).exists()


def test_a_synced_version_the_agent_did_not_upload_is_refused(machine, deployment, user):
    writes = written(deployment)
    item = bring_back(deployment, "/dev/sdb")
    planted = write_version(item.image, 1, b"planted by its owner, not this agent" * 100)
    agent = checked_in(machine)
    syncing = {"image": str(item.image_id), "phase": "syncing", "bytes_done": 1, "bytes_total": 2}
    assert agent.post("/api/agent/progress", syncing, format="json").status_code == 204
    report_writing(agent, deployment)
    response = agent.post(
        "/api/agent/result",
        {
            "state": "done",
            "written": writes,
            "synced": [{"image": str(item.image_id), "version": planted.number}],
        },
        format="json",
    )
    assert response.status_code == 409, response.content
    assert "did not upload that version" in response.json()["detail"]
    deployment.refresh_from_db()
    assert deployment.state == "writing"
    assert not deployment.events.filter(action="synced").exists()


# --- A network-mounted image beside a flashed one ---------------------------------------------


def test_the_agent_reads_its_flashed_image_beside_a_network_mounted_one(
    machine, user, django_capture_on_commit_callbacks, settings, tmp_path
):
    settings.BAAS_NBD_DIR = tmp_path / "nbd"
    system = write_version(ImageFactory(owner=user, target_disk="/dev/sda"), 0, b"s" * 8192)
    data_image = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb")
    write_version(data_image, 0, b"d" * 8192)
    mounted_setup = ImageSetupFactory(owner=user)
    setup_image_add(actor=user, setup=mounted_setup, image=system.image, version_number=0)
    setup_image_add(
        actor=user,
        setup=mounted_setup,
        image=data_image,
        version_number=0,
        sync=True,
        mount=Mount.NETWORK,
    )
    with django_capture_on_commit_callbacks(execute=False):
        deployment_enqueue(actor=user, machine=machine, setup=mounted_setup)
        started = machine_start_next(machine_id=machine.pk)
    assert started.images.filter(direction="mount").exists()
    version_map_build(version_id=system.pk)
    agent = checked_in(machine)
    served = agent.get(f"/api/image/{system.image_id}/0/map")
    assert served.status_code == 200, served.content
    data = agent.get(f"/api/image/{system.image_id}/0")
    assert data.status_code == 200
    assert b"".join(data.streaming_content) == b"s" * 8192
    assert agent.get(f"/api/image/{data_image.pk}/0").status_code == 404  # served by NBD


# --- Unknown MACs ----------------------------------------------------------------------------


def made_up_macs(n: int) -> list[str]:
    return [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(n)]


def test_fifty_made_up_macs_make_a_bounded_number_of_records(anon_client):
    for mac in made_up_macs(50):
        assert "sanboot" in anon_client.get(f"/api/boot/{mac}.ipxe").content.decode()
    assert UnknownMac.objects.count() == 20  # BAAS_UNKNOWN_MACS_NEW_PER_INTERVAL's default


def test_the_oldest_unknown_macs_make_room_for_new_ones(anon_client, settings):
    settings.BAAS_UNKNOWN_MACS_MAX = 10
    settings.BAAS_UNKNOWN_MACS_NEW_PER_INTERVAL = 1000
    macs = made_up_macs(50)
    for mac in macs:
        anon_client.get(f"/api/boot/{mac}.ipxe")
    kept = set(UnknownMac.objects.values_list("address", flat=True))
    assert kept == set(macs[-10:])


def test_an_unknown_mac_is_written_at_most_once_per_interval(anon_client):
    for _ in range(5):
        anon_client.get("/api/boot/02:00:00:00:00:01.ipxe")
    seen = UnknownMac.objects.get()
    assert seen.seen_count == 1
    UnknownMac.objects.update(last_seen_at=timezone.now() - timedelta(seconds=61))
    anon_client.get("/api/boot/02:00:00:00:00:01.ipxe")
    seen.refresh_from_db()
    assert seen.seen_count == 2
