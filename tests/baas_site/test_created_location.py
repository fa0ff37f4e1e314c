"""Every 201 answer says in ``Location`` where the new thing is, and that URL serves it."""

from __future__ import annotations

import pytest

from accounts import scopes
from catalogue.models import ImageType
from flashing.models import MachineState
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.conftest import client_for
from tests.flashing.factories import LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(administrator):
    """An administrator's client whose token may also administer accounts."""
    return client_for(administrator, scopes.ALL)


def image_create(admin, administrator):
    response = admin.post(f"/api/user/{administrator.username}/image", {"name": "deb"}, "json")
    return response, lambda found: found["uuid"] == response.json()["uuid"]


def version_upload(admin, administrator):
    image = ImageFactory(owner=administrator)
    VersionFactory(image=image, number=0)
    response = admin.generic(
        "POST", f"/api/image/{image.uuid}", b"disk bytes", content_type="application/octet-stream"
    )
    return response, lambda found: found == b"disk bytes"


def version_upload_by_put(admin, administrator):
    image = ImageFactory(owner=administrator)
    VersionFactory(image=image, number=0)
    response = admin.generic(
        "PUT", f"/api/image/{image.uuid}", b"more bytes", content_type="application/octet-stream"
    )
    return response, lambda found: found == b"more bytes"


def resumable_upload_complete(admin, administrator):
    image = ImageFactory(owner=administrator)
    VersionFactory(image=image, number=0)
    draft = {"HTTP_UPLOAD_DRAFT_INTEROP_VERSION": "8"}
    started = admin.generic(
        "POST", f"/api/image/{image.uuid}", b"", content_type="application/octet-stream",
        HTTP_UPLOAD_COMPLETE="?0", **draft,
    )  # fmt: skip
    assert started.status_code == 201, started.content
    response = admin.generic(
        "PATCH", started["Location"], b"resumed bytes", content_type="application/partial-upload",
        HTTP_UPLOAD_OFFSET="0", HTTP_UPLOAD_COMPLETE="?1", **draft,
    )  # fmt: skip
    return response, lambda found: found == b"resumed bytes"


def setup_create(admin, administrator):
    url = f"/api/user/{administrator.username}/image_setup"
    response = admin.post(url, {"name": "lab"}, "json")
    return response, lambda found: found["uuid"] == response.json()["uuid"]


def setup_image_pin(admin, administrator):
    setup = ImageSetupFactory(owner=administrator)
    image = ImageFactory(owner=administrator)
    VersionFactory(image=image, number=0)
    url = f"/api/user/{administrator.username}/image_setup/{setup.uuid}/images"
    response = admin.post(url, {"image": str(image.uuid), "version": 0}, "json")
    return response, lambda found: [pin["image"] for pin in found] == [str(image.uuid)]


def machine_create(admin, administrator):
    payload = {"name": "node9", "architecture": "x86_64", "mac_addresses": ["52:54:00:00:00:99"]}
    response = admin.post("/api/machine", payload, "json")
    return response, lambda found: found["name"] == "node9"


def lease_acquire(admin, administrator):
    machine = MachineFactory(state=MachineState.AVAILABLE)
    response = admin.post(f"/api/machine/{machine.mac}/lease", {"hours": 2}, "json")
    return response, lambda found: found["lease"]["id"] == response.json()["id"]


def deployment_enqueue(admin, administrator):
    machine = MachineFactory(state=MachineState.LEASED)
    LeaseFactory(machine=machine, user=administrator)
    setup = ImageSetupFactory(owner=administrator)
    image = ImageFactory(owner=administrator, type=ImageType.SINGLE)
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=image, number=0))
    url = f"/api/machine/{machine.mac}/boot"
    response = admin.post(url, {"setup": str(setup.uuid)}, "json")
    return response, lambda found: found["id"] == response.json()["id"]


def user_create(admin, administrator):
    payload = {"username": "newcomer", "email": "new@example.org"}
    response = admin.post("/api/user", payload, "json")
    return response, lambda found: found["username"] == "newcomer"


OPERATIONS = {
    ("/api/user/{username}/image", "post"): image_create,
    ("/api/image/{image_id}", "post"): version_upload,
    ("/api/image/{image_id}", "put"): version_upload_by_put,
    ("/api/uploads/{token}", "patch"): resumable_upload_complete,
    ("/api/user/{username}/image_setup", "post"): setup_create,
    ("/api/user/{username}/image_setup/{setup_uuid}/images", "post"): setup_image_pin,
    ("/api/machine", "post"): machine_create,
    ("/api/machine/{mac}/lease", "post"): lease_acquire,
    ("/api/machine/{mac}/boot", "post"): deployment_enqueue,
    ("/api/user", "post"): user_create,
}
# Tokens have no GET of their own: their Location is the URL that revokes them (below).
TOKEN_OPERATIONS = {("/api/auth/token", "post"), ("/api/user/{username}/tokens", "post")}


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: f"{o[1]} {o[0]}")
def test_a_201_has_a_location_that_serves_what_was_created(admin, administrator, operation):
    response, is_it = OPERATIONS[operation](admin, administrator)
    assert response.status_code == 201, response.content
    where = response["Location"]
    assert where.startswith("/api/")
    found = admin.get(where)
    assert found.status_code == 200, (where, found.content)
    body = b"".join(found.streaming_content) if found.streaming else found.json()
    assert is_it(body), (where, body)


def test_a_new_tokens_location_revokes_it(admin, administrator, anon_client):
    response = admin.post(f"/api/user/{administrator.username}/tokens", {"name": "ci"}, "json")
    assert response.status_code == 201, response.content
    where = response["Location"]
    assert where == f"/api/user/{administrator.username}/tokens/{response.json()['id']}"
    administrator.set_password("long enough secret")
    administrator.save()
    login = {"username": administrator.username, "password": "long enough secret"}
    signed_in = anon_client.post("/api/auth/token", login, format="json")
    assert signed_in.status_code == 201, signed_in.content
    assert signed_in["Location"].endswith(f"/tokens/{signed_in.json()['id']}")
    assert admin.delete(where).status_code == 204
    assert admin.delete(signed_in["Location"]).status_code == 204
    left = admin.get(f"/api/user/{administrator.username}/tokens").json()["results"]
    assert {token["id"] for token in left}.isdisjoint(
        {response.json()["id"], signed_in.json()["id"]}
    )


def test_every_operation_that_creates_documents_location_and_is_tested(user_client):
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    creating = set()
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            created = (
                operation.get("responses", {}).get("201") if isinstance(operation, dict) else None
            )
            if created:
                assert "Location" in created.get("headers", {}), (method, path)
                creating.add((path, method))
    assert creating == set(OPERATIONS) | TOKEN_OPERATIONS
