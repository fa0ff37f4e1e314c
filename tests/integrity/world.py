"""The lifecycle model's world: people with real tokens, machines, images, setups, the worker.

Everything goes through what people, scripts and the agent use: HTTP through DRF's
``APIClient`` with real bearer tokens, the services where only Celery beat or an
administrator in Django admin acts. Celery tasks go to an in-memory broker and run
only when the model says "the worker runs its pending jobs" (``run_pending_jobs``),
so a deployment can be cancelled while its power-on is still waiting, as in real life.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.test import TestCase
from rest_framework.test import APIClient

from accounts.models import Role, User
from accounts.scopes import ALL as ALL_SCOPES
from accounts.services import token_create
from catalogue.models import Image, ImageSetup, ImageType, Mount
from catalogue.services.datamaps import version_map_build
from catalogue.services.setups import setup_image_add, setup_update
from flashing.models import MachineDisk
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, write_version
from tests.flashing.factories import MachineFactory

KiB = 1024
GiB = 1024**3
TOKEN = re.compile(r"baas\.token=(\S+)")
DEPLOYMENT = re.compile(r"deployment #(\d+)")
# The setups each person owns: what they flash, and how the user data image takes part.
# "one disk": a partition table on /dev/sda, the system on its "root", user data on "home".
SETUPS = ("system", "system+data", "system+mount", "one disk")
LAYOUT = {
    "disk": "/dev/sda",
    "partitions": [
        {"label": "root", "size": 1024 * KiB, "type": "linux"},
        {"label": "home", "size": None, "type": "home"},
    ],
}


def content(seed: int, size: int = 64 * KiB) -> bytes:
    """Distinct, small bytes for a version: a pattern of the seed between zero blocks."""
    block = hashlib.sha256(str(seed).encode()).digest() * (4 * KiB // 32)
    return b"".join(block if i % 2 else bytes(len(block)) for i in range(size // len(block)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bearer(secret: str | None) -> APIClient:
    client = APIClient(raise_request_exception=False)  # a crash is a 500, as in production
    if secret:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def after_commit():
    """Run what a commit runs (``transaction.on_commit``) at the end of the block."""
    return TestCase.captureOnCommitCallbacks(execute=True)


@dataclass
class Person:
    """A user with the personal access token their scripts use."""

    user: User
    secret: str
    token_id: int
    dead_secrets: list[str] = field(default_factory=list)

    @property
    def client(self) -> APIClient:
        return bearer(self.secret)

    @property
    def name(self) -> str:
        return self.user.username


@dataclass
class Agent:
    """A management OS that got a boot token (from a boot script or a power command)."""

    machine: str
    deployment_id: int
    attempt: int
    boot_secret: str
    secret: str | None = None  # the agent token its check-in gave it
    instructions: dict[str, Any] | None = None
    synced: list[dict[str, Any]] = field(default_factory=list)
    did_sync: bool = False
    downloaded: bool = False
    finished: bool = False

    def __str__(self) -> str:
        state = "checked in" if self.secret else "booted"
        return f"agent of #{self.deployment_id} attempt {self.attempt} on {self.machine} ({state})"


@dataclass
class Box:
    """A machine of the lab and what the model knows of it."""

    name: str
    mac: str
    pk: int
    # Disk -> (owner username, image uuid): user data the machine changed and nobody synced.
    dirty: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Disk -> its partition table, as the agent would find it: (label, start, size) each.
    tables: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)


class World:
    """Two users and an administrator, two machines, images and setups for each user."""

    def __init__(self, *, token_file: Path, seed: int = 0):
        self.seed = seed
        self.token_file = token_file
        self.people: dict[str, Person] = {}
        for name, role in (("ann", Role.USER), ("bob", Role.USER), ("root", Role.ADMINISTRATOR)):
            user = UserFactory(username=name, role=role)
            token, secret = token_create(
                actor=user, user=user, name="model", scopes_wanted=ALL_SCOPES
            )
            self.people[name] = Person(user=user, secret=secret, token_id=token.pk)
        self.boxes = {
            "m0": self._machine("m0", power_driver="manual", power_settings={}),
            "m1": self._machine("m1", power_driver="command", power_settings=self.power(ok=True)),
        }
        self.images: dict[tuple[str, str], Image] = {}
        self.setups: dict[tuple[str, str], ImageSetup] = {}
        for name in ("ann", "bob"):
            self._catalogue(self.people[name].user)

    # --- The lab ---------------------------------------------------------------------------

    def power(self, *, ok: bool) -> dict[str, Any]:
        """The ``command`` driver's settings: it starts the agent (writes the token) or fails."""
        if ok:
            command = f'printf "%s %s\\n" "$BAAS_DEPLOYMENT" "$BAAS_TOKEN" >> {self.token_file}'
        else:
            command = "echo 'the BMC does not answer' >&2; exit 3"
        return {"command": command}

    def _machine(self, name: str, **power: Any) -> Box:
        machine = MachineFactory(name=name, **power)
        for disk in ("/dev/sda", "/dev/sdb"):
            MachineDisk.objects.create(machine=machine, path=disk, size=GiB)
        return Box(name=name, mac=machine.mac, pk=machine.pk)

    def _catalogue(self, owner: User) -> None:
        name = owner.username
        system = ImageFactory(owner=owner, name=f"{name}-system", target_disk="/dev/sda")
        data = ImageFactory(
            owner=owner, name=f"{name}-data", type=ImageType.USER_DATA, target_disk="/dev/sdb"
        )
        for image in (system, data):
            self.seed += 1
            version = write_version(image, 0, content(self.seed))
            version_map_build(version_id=version.pk)  # as the upload's map job does
        self.images[(name, "system")] = system
        self.images[(name, "data")] = data
        for kind in SETUPS:
            setup = ImageSetupFactory(owner=owner, name=f"{name}-{kind}")
            if kind == "one disk":
                setup_update(actor=owner, setup=setup, layout=LAYOUT)
                for image, label in ((system, "root"), (data, "home")):
                    setup_image_add(
                        actor=owner, setup=setup, image=image, version_number=0, partition=label
                    )
                self.setups[(name, kind)] = setup
                continue
            setup_image_add(actor=owner, setup=setup, image=system, version_number=0)
            if kind != "system":
                mount = Mount.NETWORK if kind.endswith("mount") else Mount.FLASH
                setup_image_add(
                    actor=owner, setup=setup, image=data, version_number=0, sync=True, mount=mount
                )
            self.setups[(name, kind)] = setup

    # --- Power commands ----------------------------------------------------------------

    def power_tokens(self) -> list[tuple[int, str]]:
        """(deployment, boot token) pairs the ``command`` driver handed to agents, then forgets."""
        if not self.token_file.exists():
            return []
        lines = self.token_file.read_text().split("\n")
        self.token_file.write_text("")
        pairs = []
        for line in lines:
            if line.strip():
                deployment, secret = line.split()
                pairs.append((int(deployment), secret))
        return pairs


def job_queues() -> list[str]:
    """Every queue a job may be sent to: the Celery app's default queue and each route's
    (the long and periodic queues; a worker test may have renamed them for its session),
    and the NBD host's when it has one of its own."""
    from django.conf import settings

    from baas_site.celery import app

    routes = app.conf.task_routes or {}
    names = {app.conf.task_default_queue, *(r["queue"] for r in routes.values())}
    return sorted(names | ({settings.BAAS_NBD_QUEUE} if settings.BAAS_NBD_QUEUE else set()))


def run_pending_jobs(limit: int = 60) -> list[tuple[str, dict[str, Any], Any]]:
    """The worker takes its pending jobs from the broker and runs them, in order, queue
    after queue (as workers on every queue would: a mount's start is on the long queue).

    Returns (task name, kwargs, result) for each; a job that raised is returned with
    its exception as the result (the model then checks that it is not a crash).
    """
    from baas_site.celery import app

    ran: list[tuple[str, dict[str, Any], Any]] = []
    with app.connection_for_write() as connection:
        for name in job_queues():
            queue = connection.SimpleQueue(name, no_ack=True)
            try:
                while len(ran) < limit:
                    try:
                        message = queue.get(block=False)
                    except queue.Empty:
                        break
                    task = message.headers["task"]
                    args, kwargs, _ = message.payload
                    with after_commit():
                        result = app.tasks[task].apply(args=args, kwargs=kwargs)
                    ran.append((task, kwargs, result))
            finally:
                queue.close()
    return ran


def forget_pending_jobs() -> None:
    """A fresh broker for a fresh example: every queue emptied."""
    from baas_site.celery import app

    with app.connection_for_write() as connection:
        for name in job_queues():
            queue = connection.SimpleQueue(name, no_ack=True)
            queue.clear()
            queue.close()
