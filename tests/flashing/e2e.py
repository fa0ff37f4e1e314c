"""The end-to-end rig: live server, real Celery worker on Redis, the real agent as a process.

A machine with the ``command`` power driver whose command starts
``baas-agent`` in the background, its disks mapped to sparse files; the test
queues deployments through the API and waits for the worker and the agent to
finish them, sending the watchdog task as beat would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from catalogue.models import Image, ImageFrozen, ImageSetup, ImageType, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map_build
from flashing.models import FINAL_STATES, Deployment, Machine, MachineDisk
from flashing.tasks import deployments_watchdog_task
from tests.catalogue.factories import write_version
from tests.flashing.factories import MachineFactory

AGENT = Path(sys.executable).parent / "baas-agent"
DISKS = ("/dev/sda", "/dev/sdb", "/dev/sdc")
MiB = 1 << 20


def image_bytes(seed: int, size: int = 3 * MiB) -> bytes:
    """Data with holes: random-looking blocks between runs of zeros."""
    block = hashlib.sha256(str(seed).encode()).digest() * (64 * 1024 // 32)
    chunks = [block if i % 3 else bytes(len(block)) for i in range(size // len(block))]
    return b"".join(chunks)


def sha256_of(path: Path, size: int) -> str:
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


@dataclass
class Rig:
    server: str
    workdir: Path
    admin: object
    client: APIClient
    machine: Machine = field(init=False)

    def __post_init__(self) -> None:
        self.machine = MachineFactory(power_driver="command")
        self.set_command()
        for disk in DISKS:
            MachineDisk.objects.create(machine=self.machine, path=disk, size=1 << 30)

    # --- the machine -------------------------------------------------------------------

    def disk(self, device: str) -> Path:
        return self.workdir / f"disk-{device.rsplit('/', 1)[1]}"

    def set_command(self, *, boot_timeout: int = 10, progress_timeout: int = 5) -> None:
        mappings = " ".join(f"--disk {d}={shlex.quote(str(self.disk(d)))}" for d in DISKS)
        log = shlex.quote(str(self.workdir / "agent-$BAAS_DEPLOYMENT.log"))
        pids = shlex.quote(str(self.workdir / "agents.pids"))
        command = (
            f"{shlex.quote(str(AGENT))} --server {self.server} --mac $BAAS_MAC "
            f'--token "$BAAS_TOKEN" {mappings} --retries 2 --timeout 10 -v >>{log} 2>&1 & '
            f"echo $! >>{pids}"
        )
        self.machine.power_settings = {
            "command": command,
            "boot_timeout": boot_timeout,
            "progress_timeout": progress_timeout,
        }
        self.machine.save()

    def agent_pids(self) -> list[int]:
        path = self.workdir / "agents.pids"
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def agent_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.workdir.glob("agent-*.log"))

    def stop_agents(self) -> None:
        for pid in self.agent_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- images and setups ---------------------------------------------------------------

    def settle(self) -> None:
        """Let the worker finish with the machine, so the database can be flushed after."""

        def quiet() -> bool:
            deployments = Deployment.objects.filter(machine=self.machine)
            if deployments.exclude(state__in=FINAL_STATES).exists():
                return False
            last = deployments.exclude(state="cancelled").order_by("-finished_at").first()
            return last is None or last.events.filter(action="system").exists()

        deadline = time.monotonic() + 10
        while not quiet() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the watchdog tasks sent last

    def image(
        self,
        image_type: str,
        disk: str,
        content: bytes,
        *,
        compression: str = "none",
        mapped: bool = True,
    ) -> Version:
        """Version 0 of a new image, as an upload leaves it: with its data map (unless
        ``mapped`` is false), then stored in ``compression`` by the compression job."""
        image = Image.objects.create(
            name=f"{image_type}-{disk.rsplit('/', 1)[1]}",
            owner=self.admin,
            type=image_type,
            target_disk=disk,
            compression=compression,
        )
        version = write_version(image, 0, content)
        if mapped:
            version_map_build(version_id=version.pk)
        if compression != "none":
            version_compress(version_id=version.pk)
            version.refresh_from_db()
        return version

    def setup(self, *versions: Version) -> ImageSetup:
        setup = ImageSetup.objects.create(
            name=f"setup-{ImageSetup.objects.count()}", owner=self.admin
        )
        for version in versions:
            ImageFrozen.objects.create(
                setup=setup,
                image=version.image,
                version=version,
                sync=version.image.type == ImageType.USER_DATA,
            )
        return setup

    # --- deployments ------------------------------------------------------------------------

    def deploy(self, setup: ImageSetup, *, sync: bool = False) -> int:
        response = self.client.post(
            f"/api/machine/{self.machine.mac}/boot",
            {"setup": str(setup.uuid), "sync": sync},
            format="json",
        )
        assert response.status_code == 201, response.content
        return response.json()["id"]

    def detail(self, deployment_id: int) -> dict:
        return self.client.get(f"/api/deployment/{deployment_id}").json()

    def wait(self, deployment_id: int, *, until=FINAL_STATES, timeout: float = 25.0) -> Deployment:
        """Poll until the deployment reaches one of ``until``, sending the watchdog each second."""
        deadline = time.monotonic() + timeout
        beat = 0.0
        while time.monotonic() < deadline:
            deployment = Deployment.objects.get(pk=deployment_id)
            if deployment.state in until:
                return deployment
            if time.monotonic() - beat > 1.0:
                deployments_watchdog_task.delay()
                beat = time.monotonic()
            time.sleep(0.05)
        events = "\n".join(
            f"  {e['action']} {e['state']}: {e['message']}"
            for e in self.detail(deployment_id)["events"]
        )
        pytest.fail(
            f"deployment #{deployment_id} is {deployment.state} after {timeout} s, "
            f"not {list(until)}:\n{events}\nagent:\n{self.agent_logs()[-3000:]}"
        )


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {timeout} s for {what}")
        time.sleep(0.05)


def make_rig(live_server, tmp_path: Path, administrator) -> Iterator[Rig]:
    client = APIClient()
    client.force_authenticate(administrator)
    rig = Rig(live_server.url, tmp_path, administrator, client)
    try:
        yield rig
    finally:
        rig.stop_agents()
        rig.settle()
