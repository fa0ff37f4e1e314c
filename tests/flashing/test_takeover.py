"""The takeover of a running deployment (issue: machine identity), tried against the live
server over real HTTP: an attacker on the lab network who knows the machine's MAC and
sniffs its boot token gets nowhere, and the real agent's deployment finishes untouched."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from catalogue.models import ImageType, Version
from catalogue.services.setups import setup_image_add
from flashing.models import Deployment, DeploymentImage, DiskContent, MachineState
from flashing.services.deployments import deployment_enqueue
from flashing.services.pipeline import deployment_power, machine_start_next
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, write_version
from tests.flashing.factories import LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = b"the lessee's system " * 2000
DATA = b"the lessee's private results " * 1000


class Http:
    """Plain HTTP to the live server, as a machine or an attacker on the lab network has it."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {}
        data = None
        if isinstance(body, bytes):
            data, headers["Content-Type"] = body, "application/octet-stream"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self.base + path  # the live server's http:// URL
        request = urllib.request.Request(url, data, headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, self._decoded(response.read(), response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, self._decoded(exc.read(), exc.headers)

    @staticmethod
    def _decoded(raw: bytes, headers: Any) -> Any:
        if "json" in (headers.get("Content-Type") or ""):
            return json.loads(raw or b"null")
        return raw


@pytest.fixture
def running(live_server, user):
    """A deployment of the lessee's private images (one brought back) that BAAS powered on."""
    machine = MachineFactory(state=MachineState.LEASED)
    LeaseFactory(machine=machine, user=user)
    system = write_version(ImageFactory(owner=user, target_disk="/dev/sda"), 0, SYSTEM)
    data_image = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdb")
    data = write_version(data_image, 0, DATA)
    setup = ImageSetupFactory(owner=user)
    setup_image_add(actor=user, setup=setup, image=system.image, version_number=0)
    deployment_enqueue(actor=user, machine=machine, setup=setup)
    deployment = machine_start_next(machine_id=machine.pk)
    DeploymentImage.objects.create(  # what it brings back first: the user data on /dev/sdb
        deployment=deployment,
        direction=DeploymentImage.Direction.SYNC,
        image=data_image,
        version=data,
        version_number=0,
        disk="/dev/sdb",
        sync=True,
    )
    assert deployment_power(deployment_id=deployment.pk, attempt=1) == "powered"
    return Http(live_server.url), machine, deployment, system, data


def test_the_takeover_chain_is_refused_at_every_step(running):
    http, machine, deployment, system, data = running
    private = f"/api/image/{system.image_id}/0"

    # The machine boots: its script carries the attempt's one boot token.
    status, script = http.call("GET", f"/api/boot/{machine.mac}.ipxe")
    boot_token = re.search(rb"baas\.token=(\S+)", script).group(1).decode()

    # 1. A second caller fetching the boot script gets no token, and it is on the record.
    status, stolen = http.call("GET", f"/api/boot/{machine.mac}.ipxe")
    assert status == 200 and b"baas.token" not in stolen and b"sanboot" in stolen
    assert deployment.events.filter(action="boot_refused").count() == 1

    # The real agent checks in.
    status, answer = http.call(
        "POST", "/api/agent/checkin", {"mac": machine.mac, "agent_version": "real"}, boot_token
    )
    assert status == 200
    agent = answer["token"]

    # 2. Replaying the sniffed check-in gets 409 (recorded); the real agent keeps its token.
    status, answer = http.call(
        "POST", "/api/agent/checkin", {"mac": machine.mac, "agent_version": "x"}, boot_token
    )
    assert status == 409 and "bound to the agent that checked in first" in answer["detail"]
    assert deployment.events.filter(action="checkin_refused").count() == 1

    # 3. Without the agent's token, nothing of the deployment is the attacker's.
    for token in (None, boot_token, "baasagent_" + "A" * 43):
        assert http.call("GET", "/api/agent/instructions", token=token)[0] == 401
        assert http.call("GET", private, token=token)[0] == 401
        assert http.call("GET", f"{private}/map", token=token)[0] == 401
        upload = http.call("POST", f"/api/image/{data.image_id}", b"planted" * 100, token)
        assert upload[0] == 401
        forged = {"image": str(system.image_id), "phase": "writing", "bytes_done": 1}
        forged["bytes_total"] = len(SYSTEM)
        assert http.call("POST", "/api/agent/progress", forged, token)[0] == 401
        assert http.call("POST", "/api/log", {"lines": ["planted"]}, token)[0] == 401
        done = {"state": "done", "written": [], "synced": []}
        assert http.call("POST", "/api/agent/result", done, token)[0] == 401
        assert http.call("POST", "/api/agent/result", {"state": "failed"}, token)[0] == 401
    assert not Version.objects.filter(image=data.image, number__gt=0).exists()
    assert Deployment.objects.get(pk=deployment.pk).state == "booting"

    # The real agent's flow, untouched: instructions, the lessee's bytes, progress, done.
    status, instructions = http.call("GET", "/api/agent/instructions", token=agent)
    assert status == 200 and [w["image"] for w in instructions["write"]] == [str(system.image_id)]
    status, body = http.call("GET", private, token=agent)
    assert (status, hashlib.sha256(body).hexdigest()) == (200, system.sha256)
    progress = {"image": str(system.image_id), "phase": "writing"}
    progress |= {"bytes_done": len(SYSTEM), "bytes_total": len(SYSTEM)}
    assert http.call("POST", "/api/agent/progress", progress, agent)[0] == 204
    written = [{"image": str(system.image_id), "version": 0, "disk": "/dev/sda"}]
    written[0]["sha256"] = system.sha256
    status, answer = http.call(
        "POST", "/api/agent/result", {"state": "done", "written": written}, agent
    )
    assert (status, answer) == (200, {"state": "done"})
    recorded = DiskContent.objects.filter(machine=machine).values_list("disk", "version")
    assert list(recorded) == [("/dev/sda", system.pk)]

    # Afterwards the deployment is over for everyone: its agent is told to stop (410).
    status, answer = http.call("GET", "/api/agent/instructions", token=agent)
    assert status == 410 and "is done" in answer["detail"]
    assert http.call("POST", "/api/agent/checkin", {"mac": machine.mac}, boot_token)[0] == 410


def test_a_stolen_check_in_after_the_real_one_cannot_report_done(running):
    """The attacker who was faster than nobody: the machine checked in, then the attacker
    tries every agent call with what it could see on the wire before the check-in."""
    http, machine, deployment, system, data = running
    script = http.call("GET", f"/api/boot/{machine.mac}.ipxe")[1]
    boot_token = re.search(rb"baas\.token=(\S+)", script).group(1).decode()
    assert http.call("POST", "/api/agent/checkin", {"mac": machine.mac}, boot_token)[0] == 200
    written = [{"image": str(system.image_id), "version": 0, "disk": "/dev/sda"}]
    written[0]["sha256"] = system.sha256
    attempts = [
        ("POST", "/api/agent/checkin", {"mac": machine.mac}),
        ("POST", "/api/agent/result", {"state": "done", "written": written}),
        ("POST", "/api/agent/result", {"state": "failed", "reason": "planted"}),
        ("POST", f"/api/image/{data.image_id}", b"planted" * 100),
    ]
    assert [http.call(*attempt, boot_token)[0] for attempt in attempts] == [409, 401, 401, 401]
    deployment.refresh_from_db()
    assert (deployment.state, deployment.failure_reason) == ("booting", "")
    assert not DiskContent.objects.filter(machine=machine).exists()
    assert not Version.objects.filter(image=data.image, number__gt=0).exists()
