"""A deployment of a version whose SHA-256 a large upload left to a background job, and of
versions that are damaged or changed on disk: what its agent is given, through the URLs."""

from __future__ import annotations

import hashlib

import pytest

from catalogue.models import Version
from catalogue.storage import get_storage
from flashing.services import agent as agent_services
from flashing.services.pipeline import machine_advance, machine_start_next
from tests.catalogue.factories import ImageFactory
from tests.flashing.agentcalls import assert_started_then_failed, checked_in, queue_setup_of

pytestmark = pytest.mark.django_db


# --- Versions whose SHA-256 a large upload left to a background job ----------------------


@pytest.fixture
def pending_version(user_client, user, settings):
    """Version 1 of an image, uploaded large enough that its SHA-256 waits for the job."""
    settings.BAAS_UPLOAD_INLINE_SHA256_MAX = 1024
    image = ImageFactory(owner=user, target_disk="/dev/sda")
    data = b"installed system " * 4096 + bytes(1 << 20)
    response = user_client.post(
        f"/api/image/{image.uuid}", data, content_type="application/octet-stream"
    )
    assert response.status_code == 201 and response.json()["sha256"] is None
    version = Version.objects.get(image=image, number=1)
    version.expected = hashlib.sha256(data).hexdigest()
    return version


def test_a_deployment_starts_once_its_versions_sha256_is_recorded(
    user_client, user, machine, pending_version, django_capture_on_commit_callbacks
):
    queue_setup_of(user_client, user, machine, pending_version)
    with django_capture_on_commit_callbacks():
        assert machine_advance(machine_id=machine.pk) == "started"
    pending_version.refresh_from_db()
    assert pending_version.sha256 == pending_version.expected
    (entry,) = checked_in(machine).get("/api/agent/instructions").json()["write"]
    assert entry["sha256"] == pending_version.expected
    assert bearer_map(machine, entry)["sha256"] == pending_version.expected


def bearer_map(machine, entry) -> dict:
    return checked_in(machine).get(entry["map_url"]).json()


def test_instructions_compute_a_missing_sha256_themselves(
    user_client, user, machine, pending_version
):
    queue_setup_of(user_client, user, machine, pending_version)
    machine_start_next(machine_id=machine.pk)  # started without the pipeline's step
    (entry,) = checked_in(machine).get("/api/agent/instructions").json()["write"]
    assert entry["sha256"] == pending_version.expected


def test_a_version_changed_on_disk_before_its_sha256_fails_the_deployment(
    user_client, user, machine, pending_version
):
    queue_setup_of(user_client, user, machine, pending_version)
    path = get_storage().version_path(pending_version.image_id, 1, "none")
    with open(path, "r+b") as file:
        file.write(b"X")
    assert_started_then_failed(machine, "no longer holds the data its upload sent")


def test_a_write_entry_carries_its_data_map_unless_it_is_large(
    user_client, user, machine, pending_version, django_capture_on_commit_callbacks, monkeypatch
):
    """The agent's first need is the version's data map: the instruction holds what
    ``map_url`` answers, so the agent does not ask; a map of many ranges stays behind it."""
    queue_setup_of(user_client, user, machine, pending_version)
    with django_capture_on_commit_callbacks():
        assert machine_advance(machine_id=machine.pk) == "started"
    agent = checked_in(machine)
    (entry,) = agent.get("/api/agent/instructions").json()["write"]
    served = agent.get(entry["map_url"]).json()
    assert entry["map"] == served
    assert entry["map"]["sha256"] == pending_version.expected and served["ranges"]
    monkeypatch.setattr(agent_services, "INLINE_MAP_RANGES", len(served["ranges"]) - 1)
    (entry,) = agent.get("/api/agent/instructions").json()["write"]
    assert "map" not in entry and entry["map_url"]
