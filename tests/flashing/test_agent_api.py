"""Network boot and the agent's API, through the URLs: tokens, instructions, progress, result."""

from __future__ import annotations

import re

import pytest

from catalogue.models import ImageType, Version
from catalogue.services.datamaps import version_map_build
from catalogue.storage import get_storage
from flashing.models import (
    AgentToken,
    Deployment,
    DiskContent,
    MachineState,
    UnknownMac,
)
from flashing.services.pipeline import machine_start_next
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.agentcalls import (
    armed,
    assert_started_then_failed,
    bearer,
    boot_token,
    bring_back,
    checked_in,
    report_writing,
    written,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(user):
    setup = ImageSetupFactory(owner=user)
    for disk, content in (("/dev/sda", b"system" * 5000), ("/dev/sdb", b"data" * 4000)):
        image = ImageFactory(owner=user, target_disk=disk)
        ImageFrozenFactory(
            setup=setup, version=VersionFactory(image=image, number=0, content=content)
        )
    return setup


@pytest.fixture
def deployment(user_client, machine, setup):
    response = user_client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )
    assert response.status_code == 201, response.content
    return machine_start_next(machine_id=machine.pk)


# --- Network boot -------------------------------------------------------------------


def test_an_unknown_mac_boots_its_disk_and_is_recorded_for_the_administrators(
    anon_client, settings
):
    settings.BAAS_UNKNOWN_MAC_INTERVAL = 0  # every fetch counts (see test_machine_identity)
    for _ in range(2):
        response = anon_client.get("/api/boot/AA-BB-CC-00-11-22.ipxe")
        assert response.status_code == 200
        assert response.content.decode().startswith("#!ipxe\n")
        assert "sanboot --no-describe --drive 0x80" in response.content.decode()
    seen = UnknownMac.objects.get()
    assert (seen.address, seen.seen_count) == ("aa:bb:cc:00:11:22", 2)


def test_a_machine_with_nothing_to_deploy_boots_its_disk(anon_client, machine, setup, user_client):
    user_client.post(f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json")
    script = anon_client.get(f"/api/boot/{machine.mac}.ipxe").content.decode()
    assert "sanboot" in script and "kernel" not in script  # queued, not started: not yet


def test_a_pending_deployment_boots_the_management_os_with_a_hashed_one_time_token(
    anon_client, machine, deployment, settings
):
    settings.BAAS_PUBLIC_URL = "http://baas.test:8000"
    settings.BAAS_MGMT_CMDLINE = "console=ttyS0"
    armed(machine)
    script = anon_client.get(f"/api/boot/{machine.mac}.ipxe").content.decode()
    assert script.startswith("#!ipxe\n")
    kernel = re.search(r"^kernel (\S+) (.*)$", script, re.M)
    assert kernel.group(1) == "http://baas.test:8000/api/boot/mgmt/vmlinuz"
    words = kernel.group(2).split()
    assert "baas.server=http://baas.test:8000" in words and "console=ttyS0" in words
    assert f"baas.mac={machine.mac}" in words
    assert "initrd --name initrd.img http://baas.test:8000/api/boot/mgmt/initrd.img" in script
    secret = next(w for w in words if w.startswith("baas.token=")).split("=", 1)[1]
    stored = AgentToken.objects.get(deployment=deployment, kind="boot")
    assert secret not in stored.digest and len(stored.digest) == 64


def test_the_management_os_files_are_served_when_built(anon_client, settings, tmp_path):
    settings.BAAS_MGMT_OS_DIR = tmp_path
    assert anon_client.get("/api/boot/mgmt/vmlinuz").status_code == 404
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    response = anon_client.get("/api/boot/mgmt/vmlinuz")
    assert (response.status_code, b"".join(response.streaming_content)) == (200, b"kernel")
    assert anon_client.get("/api/boot/mgmt/secret_key").status_code == 404


# --- Check-in and tokens --------------------------------------------------------------------


def test_a_boot_token_is_accepted_once(machine, deployment):
    client = bearer(boot_token(machine))
    first = client.post("/api/agent/checkin", {"mac": machine.mac}, format="json")
    assert first.status_code == 200 and first.json()["deployment"] == deployment.pk
    assert first.json()["token"].startswith("baasagent_")
    again = client.post("/api/agent/checkin", {"mac": machine.mac}, format="json")
    assert again.status_code == 409  # the attempt is bound to the first agent


def test_a_boot_token_of_another_machine_is_refused(machine, deployment):
    response = bearer(boot_token(machine)).post(
        "/api/agent/checkin", {"mac": "52:54:00:ff:ff:ff"}, format="json"
    )
    assert response.status_code == 403


def test_a_boot_token_is_good_for_nothing_but_the_check_in(machine, deployment):
    assert bearer(boot_token(machine)).get("/api/agent/instructions").status_code == 401


def test_an_agent_token_is_good_only_for_the_agents_calls(machine, deployment, user_client):
    agent = checked_in(machine)
    assert agent.get("/api/machines").status_code == 403
    assert agent.get("/api/images").status_code == 403
    assert user_client.get("/api/machines").status_code == 200  # personal tokens still work
    assert bearer("baasagent_forged").get("/api/agent/instructions").status_code == 401


def test_the_agent_reads_only_its_deployments_images(machine, deployment, user):
    agent = checked_in(machine)
    item = deployment.images.first()
    response = agent.get(f"/api/image/{item.image_id}/0")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:6] in (b"system", b"datada")
    foreign = VersionFactory(image=ImageFactory(owner=user, type=ImageType.SYSTEM), number=0)
    assert agent.get(f"/api/image/{foreign.image_id}/0").status_code == 404
    # Written images are not the agent's to upload to.
    upload = agent.post(
        f"/api/image/{item.image_id}", b"x" * 10, content_type="application/octet-stream"
    )
    assert upload.status_code == 403


def test_instructions_list_the_images_to_write(machine, deployment):
    body = checked_in(machine).get("/api/agent/instructions").json()
    assert (body["deployment"], body["sync"]) == (deployment.pk, [])
    entries = sorted(body["write"], key=lambda e: e["disk"])
    versions = {row.disk: row.version for row in deployment.images.select_related("version")}
    for entry in entries:
        version = versions[entry["disk"]]
        assert entry == {
            "image": str(version.image_id),
            "version": 0,
            "disk": entry["disk"],
            "url": f"/api/image/{version.image_id}/0",
            "size": version.size,
            "stored_size": version.size,
            "sha256": version.sha256,
            "compression": "none",
            "map_url": f"/api/image/{version.image_id}/0/map",
            "data_url": f"/api/image/{version.image_id}/0/data",
        }


def test_the_check_in_answer_holds_the_instructions(machine, deployment):
    response = bearer(boot_token(machine)).post(
        "/api/agent/checkin", {"mac": machine.mac, "agent_version": "test"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    asked = bearer(body["token"]).get("/api/agent/instructions")
    assert asked.status_code == 200
    assert body["instructions"] == asked.json()  # one call the agent can skip
    assert len(body["instructions"]["write"]) == 2


def test_a_check_in_stands_when_its_instructions_cannot_be_given(machine, deployment):
    row = deployment.images.get(disk="/dev/sda")
    Version.objects.filter(pk=row.version_id).update(damaged="bit rot")
    response = bearer(boot_token(machine)).post(
        "/api/agent/checkin", {"mac": machine.mac, "agent_version": "test"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert "instructions" not in response.json()
    again = bearer(response.json()["token"]).get("/api/agent/instructions")
    assert again.status_code == 409 and "damaged" in again.json()["detail"]  # it says why
    deployment.refresh_from_db()
    assert deployment.state == "failed" and "damaged" in deployment.failure_reason


def test_the_agent_reads_the_maps_and_data_of_its_deployments_images_only(
    machine, deployment, user
):
    agent = checked_in(machine)
    item = deployment.images.select_related("version").first()
    version_map_build(version_id=item.version.pk)
    served = agent.get(f"/api/image/{item.image_id}/0/map")
    assert served.status_code == 200
    assert served.json()["sha256"] == item.version.sha256
    data = agent.get(f"/api/image/{item.image_id}/0/data")
    assert data.status_code == 200
    assert b"".join(data.streaming_content)  # read to the end, which closes the file
    foreign = VersionFactory(image=ImageFactory(owner=user, type=ImageType.SYSTEM), number=0)
    version_map_build(version_id=foreign.pk)
    assert agent.get(f"/api/image/{foreign.image_id}/0/map").status_code == 404
    assert agent.get(f"/api/image/{foreign.image_id}/0/data").status_code == 404


# --- Progress, log, result -------------------------------------------------------------------


def test_progress_moves_the_deployment_along_and_shows_for_people(machine, deployment, user_client):
    agent = checked_in(machine)
    item = deployment.images.order_by("id").first()
    for phase, done in (("writing", 1000), ("writing", 20000), ("verifying", 5000)):
        response = agent.post(
            "/api/agent/progress",
            {"image": str(item.image_id), "phase": phase, "bytes_done": done, "bytes_total": 30000},
            format="json",
        )
        assert response.status_code == 204, response.content
    body = user_client.get(f"/api/deployment/{deployment.pk}").json()
    assert body["state"] == "verifying"
    shown = next(i for i in body["images"] if i["image"] == str(item.image_id))
    assert (shown["phase"], shown["bytes_done"], shown["bytes_total"]) == ("verifying", 5000, 30000)
    actions = [e["action"] for e in body["events"]]
    assert actions[-2:] == ["writing", "verifying"] and "checked_in" in actions


def test_progress_for_an_image_not_in_the_deployment_is_refused(machine, deployment):
    response = checked_in(machine).post(
        "/api/agent/progress",
        {"image": str(ImageFactory().pk), "phase": "writing", "bytes_done": 1, "bytes_total": 2},
        format="json",
    )
    assert response.status_code == 400


def test_log_lines_are_kept_with_the_deployment(machine, deployment, user_client):
    agent = checked_in(machine)
    assert agent.post("/api/log", {"lines": ["one", "two"]}, format="json").status_code == 204
    events = user_client.get(f"/api/deployment/{deployment.pk}").json()["events"]
    assert [e["message"] for e in events if e["action"] == "agent"] == ["one", "two"]


def test_done_records_the_disks_and_ends_the_agents_token(machine, deployment, user_client):
    agent = checked_in(machine)
    report_writing(agent, deployment)
    response = agent.post(
        "/api/agent/result",
        {"state": "done", "written": written(deployment), "synced": []},
        format="json",
    )
    assert (response.status_code, response.json()) == (200, {"state": "done"})
    assert sorted(DiskContent.objects.filter(machine=machine).values_list("disk", flat=True)) == [
        "/dev/sda",
        "/dev/sdb",
    ]
    body = user_client.get(f"/api/deployment/{deployment.pk}").json()
    assert all(i["bytes_done"] == i["bytes_total"] for i in body["images"])
    gone = agent.get("/api/agent/instructions")  # the deployment is over: stop (was 401)
    assert gone.status_code == 410 and "is done" in gone.json()["detail"]


def test_the_last_log_lines_come_with_the_result_and_are_kept_before_it(
    machine, deployment, user_client
):
    agent = checked_in(machine)
    report_writing(agent, deployment)
    lines = ["written and verified", "done: 2 image(s) written"]
    response = agent.post(
        "/api/agent/result",
        {"state": "done", "written": written(deployment), "synced": [], "lines": lines},
        format="json",
    )
    assert (response.status_code, response.json()) == (200, {"state": "done"})
    events = user_client.get(f"/api/deployment/{deployment.pk}").json()["events"]
    kept = [e for e in events if e["action"] == "agent"]
    assert [e["message"] for e in kept] == lines
    assert all(e["state"] != "done" for e in kept)  # kept while the deployment ran


def test_done_with_a_wrong_sha256_is_failed_and_records_nothing(machine, deployment):
    agent = checked_in(machine)
    report_writing(agent, deployment)
    response = agent.post(
        "/api/agent/result",
        {"state": "done", "written": written(deployment, sha256="0" * 64)},
        format="json",
    )
    assert response.json() == {"state": "failed"}
    deployment.refresh_from_db()
    assert "SHA-256" in deployment.failure_reason
    assert not DiskContent.objects.filter(machine=machine).exists()


def test_a_failure_is_recorded_with_its_reason(machine, deployment):
    agent = checked_in(machine)
    agent.post("/api/agent/result", {"state": "failed", "reason": "disk on fire"}, format="json")
    deployment.refresh_from_db()
    assert (deployment.state, deployment.failure_reason) == ("failed", "disk on fire")
    assert Deployment.objects.get(pk=deployment.pk).machine.state == MachineState.LEASED


def test_a_retried_sync_upload_gets_the_version_it_made(machine, deployment):
    item = bring_back(deployment, "/dev/sdb")
    agent = checked_in(machine)
    url = f"/api/image/{item.image_id}"
    changed = b"results" * 3000

    first = agent.generic("POST", url, changed, content_type="application/octet-stream")
    again = agent.generic("POST", url, changed, content_type="application/octet-stream")
    other = agent.generic("POST", url, changed + b"!", content_type="application/octet-stream")

    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 201)
    assert first.json()["version"] == again.json()["version"] == 1  # the answer was lost: a retry
    assert other.json()["version"] == 2
    note = Version.objects.get(image=item.image, number=1).note
    assert note == f"Synced back from /dev/sdb of {machine.name} by deployment #{deployment.pk}."
    assert sorted(get_storage().image_dir(item.image_id).glob("*.img")) == [
        get_storage().version_path(item.image_id, n, "none") for n in (0, 1, 2)
    ]


def test_a_damaged_version_is_not_handed_to_an_agent(user_client, user, machine, setup):
    response = user_client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )
    assert response.status_code == 201
    version = setup.frozen_images.first().version
    Version.objects.filter(pk=version.pk).update(damaged="Its file was cut short.")
    assert_started_then_failed(machine, "is damaged: Its file was cut short.")
