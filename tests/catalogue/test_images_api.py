"""Images through the API: create with an empty version 0, list, read, change, delete."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest

from accounts.models import AuditEvent
from catalogue.models import Image, ImageType, Version
from catalogue.services.images import KNOWN_ZEROS_SHA256, compute_zeros_sha256, zeros_sha256
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory, ImageFrozenFactory, VersionFactory

pytestmark = pytest.mark.django_db
GiB = 1 << 30


def create(client, owner, **payload):
    payload.setdefault("name", "debian")
    return client.post(f"/api/user/{owner.username}/image", payload, format="json")


# --- Create ---------------------------------------------------------------------------


def test_creating_an_image_makes_an_empty_sparse_six_gigabyte_version_zero_at_once(
    user_client, user
):
    started = time.monotonic()
    response = create(user_client, user, target_disk="/dev/nvme0n1p2", description="for tests")
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.json()
    body = response.json()
    assert elapsed < 1.0
    assert (body["name"], body["owner"], body["type"], body["target_disk"]) == (
        "debian",
        user.username,
        "single",
        "/dev/nvme0n1p2",
    )
    [version] = body["versions"]
    assert version["number"] == 0
    assert version["size"] == 6 * GiB
    assert version["sha256"] == KNOWN_ZEROS_SHA256[6 * GiB]
    assert version["stored_size"] == 0
    stored = get_storage().stat(body["uuid"], 0, "none")
    assert (stored.size, stored.allocated) == (6 * GiB, 0)
    assert AuditEvent.objects.filter(action="image.create", target_id=body["uuid"]).exists()


def test_the_precomputed_empty_checksum_is_the_real_one():
    assert compute_zeros_sha256(6 * GiB) == KNOWN_ZEROS_SHA256[6 * GiB]


def test_the_empty_checksum_of_other_sizes_is_computed_once(user_client, user, settings):
    settings.BAAS_NEW_IMAGE_SIZE = 3 * (1 << 20) + 5
    response = create(user_client, user)
    expected = hashlib.sha256(bytes(3 * (1 << 20) + 5)).hexdigest()
    assert response.json()["versions"][0]["sha256"] == expected
    assert zeros_sha256(3 * (1 << 20) + 5) == expected


def test_an_empty_qcow2_image_is_a_real_qcow2_file(user_client, user):
    response = create(user_client, user, file_standard="qcow2")
    assert response.status_code == 201, response.json()
    [version] = response.json()["versions"]
    path = get_storage().version_path(response.json()["uuid"], 0, "none")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True
        ).stdout
    )
    assert (info["format"], info["virtual-size"]) == ("qcow2", 6 * GiB)
    assert version["virtual_size"] == 6 * GiB
    assert version["size"] == path.stat().st_size < 1 << 20
    assert version["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_disk", "sda"),
        ("target_disk", "/dev/../etc/passwd"),
        ("name", "a/b"),
        ("name", "   "),
        ("type", "weird"),
        ("compression", "lzma"),
    ],
)
def test_malformed_input_is_400_and_creates_nothing(user_client, user, field, value):
    response = create(user_client, user, **{field: value})
    assert response.status_code == 400
    assert field in response.json()["detail"]
    assert not Image.objects.exists()


def test_a_user_cannot_create_a_system_image_but_a_moderator_can(
    user_client, user, moderator_client, moderator
):
    assert create(user_client, user, type="system").status_code == 403
    assert create(moderator_client, moderator, type="system").status_code == 201
    assert list(Image.objects.values_list("owner", flat=True)) == [moderator.pk]


def test_an_administrator_creates_an_image_for_a_user(admin_client_api, user):
    response = create(admin_client_api, user)
    assert response.status_code == 201
    assert Image.objects.get().owner == user


def test_nobody_creates_images_for_someone_else(user_client, other_user):
    assert create(user_client, other_user).status_code == 404
    assert not Image.objects.exists()


# --- Lists and reads ------------------------------------------------------------------------


def test_a_users_images_filter_by_type_and_name(user_client, user):
    ImageFactory(owner=user, name="a", type=ImageType.SINGLE)
    ImageFactory(owner=user, name="b", type=ImageType.BOOT)
    ImageFactory(owner=user, name="b", type=ImageType.SINGLE)
    ImageFactory(name="b")  # someone else's
    base = f"/api/user/{user.username}/images"
    assert len(user_client.get(base).json()["results"]) == 3
    assert [i["name"] for i in user_client.get(f"{base}?type=boot").json()["results"]] == ["b"]
    assert len(user_client.get(f"{base}?name=b").json()["results"]) == 2
    by_name = user_client.get(f"{base}/b?type=single").json()["results"]
    assert [(i["name"], i["type"]) for i in by_name] == [("b", "single")]
    assert user_client.get(f"{base}?type=nonsense").status_code == 400


@pytest.mark.parametrize("name", ["bad%00name", "%20%20", "tab%09name"])
def test_a_name_no_image_can_have_is_a_400_not_an_empty_list(user_client, user, name):
    response = user_client.get(f"/api/user/{user.username}/images/{name}")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("image_name: An image name is printable text")


def test_image_list_shows_own_and_system_images_paginated(user_client, user, administrator):
    own = ImageFactory(owner=user, name="mine")
    system = ImageFactory(owner=administrator, name="shared", type=ImageType.SYSTEM)
    ImageFactory(owner=administrator, name="private")
    body = user_client.get("/api/images").json()
    assert body["count"] == 2
    assert {i["uuid"] for i in body["results"]} == {str(own.uuid), str(system.uuid)}
    page = user_client.get("/api/images?limit=1").json()
    assert len(page["results"]) == 1
    assert page["next"]
    assert user_client.get("/api/images?search=sha").json()["count"] == 1
    assert user_client.get(f"/api/images?owner={user.username}").json()["count"] == 1


def test_a_moderator_sees_the_images_they_maintain(moderator_client, moderator, administrator):
    maintained = ImageFactory(owner=administrator, type=ImageType.BOOT)
    maintained.maintainers.add(moderator)
    ImageFactory(owner=administrator, type=ImageType.BOOT)
    body = moderator_client.get("/api/images").json()
    assert [i["uuid"] for i in body["results"]] == [str(maintained.uuid)]


def test_an_administrator_sees_every_image(admin_client_api, user, other_user):
    ImageFactory(owner=user)
    ImageFactory(owner=other_user)
    assert admin_client_api.get("/api/images").json()["count"] == 2


def populate(owner, count: int) -> None:
    for _ in range(count):
        image = ImageFactory(owner=owner, type=ImageType.SYSTEM)
        VersionFactory(image=image, number=0)
        VersionFactory(image=image, number=1)


@pytest.mark.parametrize("count", [1, 6])
def test_the_image_list_takes_the_same_queries_however_many_images(
    admin_client_api, administrator, moderator, count, django_assert_num_queries
):
    populate(administrator, count)
    for image in Image.objects.all():
        image.maintainers.add(moderator)
        image.associated_images.add(Image.objects.first())
    admin_client_api.get("/api/images")  # the token's first use is recorded once
    # token, count, images with owners, versions, maintainers, associated images
    with django_assert_num_queries(6):
        body = admin_client_api.get("/api/images").json()
    assert body["count"] == count
    assert len(body["results"][0]["versions"]) == 2


@pytest.mark.parametrize("count", [1, 6])
def test_a_users_image_list_takes_the_same_queries_however_many_images(
    user_client, user, count, django_assert_num_queries
):
    populate(user, count)
    user_client.get(f"/api/user/{user.username}/images")
    # token, user, the count, images with owners, versions, maintainers, associated images
    with django_assert_num_queries(7):
        body = user_client.get(f"/api/user/{user.username}/images").json()["results"]
    assert len(body) == count


def test_an_image_reads_with_its_versions(user_client, user):
    image = ImageFactory(owner=user)
    VersionFactory(image=image, number=0)
    VersionFactory(image=image, number=1, content=b"new" * 1000)
    body = user_client.get(f"/api/image/{image.uuid}").json()
    assert [v["number"] for v in body["versions"]] == [0, 1]
    assert body["versions"][1]["sha256"] == hashlib.sha256(b"new" * 1000).hexdigest()
    versions = user_client.get(f"/api/image/{image.uuid}/versions").json()["results"]
    assert [(v["number"], v["size"]) for v in versions] == [(0, 65536), (1, 3000)]


def test_malformed_uuids_are_400_and_unknown_ones_404(user_client):
    for suffix in ("", "/versions"):
        response = user_client.get(f"/api/image/not-a-uuid{suffix}")
        assert response.status_code == 400
        assert "UUID" in response.json()["detail"]
        unknown = user_client.get(f"/api/image/00000000-0000-4000-8000-000000000000{suffix}")
        assert unknown.status_code == 404


# --- Change -------------------------------------------------------------------------------


def test_an_owner_changes_metadata_with_patch_and_put(user_client, user, other_user):
    image = ImageFactory(owner=user)
    other = ImageFactory(owner=user)
    response = user_client.patch(
        f"/api/image/{image.uuid}",
        {"name": "renamed", "target_disk": "/dev/sdb", "associated_images": [str(other.uuid)]},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["associated_images"] == [str(other.uuid)]
    put = user_client.put(f"/api/image/{image.uuid}", {"description": "d"}, format="json")
    assert put.status_code == 200
    image.refresh_from_db()
    assert (image.name, image.target_disk, image.description) == ("renamed", "/dev/sdb", "d")
    assert AuditEvent.objects.filter(action="image.update", target_id=str(image.uuid)).count() == 2


def test_associating_an_image_one_may_not_read_is_400(user_client, user, other_user):
    image = ImageFactory(owner=user)
    private = ImageFactory(owner=other_user)
    response = user_client.patch(
        f"/api/image/{image.uuid}", {"associated_images": [str(private.uuid)]}, format="json"
    )
    assert response.status_code == 400
    assert str(private.uuid) in response.json()["detail"]


def test_a_user_cannot_turn_an_image_into_a_system_image(user_client, user):
    image = ImageFactory(owner=user)
    response = user_client.patch(f"/api/image/{image.uuid}", {"type": "system"}, format="json")
    assert response.status_code == 403
    image.refresh_from_db()
    assert image.type == ImageType.SINGLE


def test_the_file_standard_is_fixed(user_client, user):
    image = ImageFactory(owner=user)
    response = user_client.patch(
        f"/api/image/{image.uuid}", {"file_standard": "qcow2"}, format="json"
    )
    assert response.status_code == 400
    assert "fixed" in response.json()["detail"]


def test_only_administrators_assign_maintainers_and_only_moderators(
    user_client, user, admin_client_api, moderator, other_user
):
    image = ImageFactory(owner=user, type=ImageType.SYSTEM)
    payload = {"maintainers": [moderator.username]}
    assert user_client.patch(f"/api/image/{image.uuid}", payload, format="json").status_code in (
        403,
    )
    response = admin_client_api.patch(f"/api/image/{image.uuid}", payload, format="json")
    assert response.json()["maintainers"] == [moderator.username]
    bad = {"maintainers": [other_user.username]}
    response = admin_client_api.patch(f"/api/image/{image.uuid}", bad, format="json")
    assert response.status_code == 400
    assert "not a moderator" in response.json()["detail"]


# --- Delete -------------------------------------------------------------------------------


def test_deleting_an_image_removes_its_files_after_the_commit(
    user_client, user, django_capture_on_commit_callbacks
):
    image = ImageFactory(owner=user)
    VersionFactory(image=image, number=0)
    directory = get_storage().image_dir(image.uuid)
    with django_capture_on_commit_callbacks(execute=True):
        response = user_client.delete(f"/api/image/{image.uuid}")
    assert response.status_code == 204
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not Version.objects.filter(image_id=image.pk).exists()
    assert not directory.exists()
    assert AuditEvent.objects.filter(action="image.delete", target_id=str(image.uuid)).exists()


def test_a_pinned_image_cannot_be_deleted_and_the_answer_names_the_setup(user_client, user):
    pin = ImageFrozenFactory(version__image__owner=user, setup__name="kernel lab")
    image = pin.image
    response = user_client.delete(f"/api/image/{image.uuid}")
    assert response.status_code == 409
    assert "kernel lab" in response.json()["detail"]
    assert Image.objects.filter(pk=image.pk).exists()
    assert get_storage().version_path(image.uuid, pin.version.number, "none").exists()


def test_the_schema_describes_every_image_route(user_client):
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    for route, methods in {
        "/api/user/{username}/image": ["post"],
        "/api/user/{username}/images": ["get"],
        "/api/user/{username}/images/{image_name}": ["get"],
        "/api/images": ["get"],
        "/api/image/{image_id}": ["get", "put", "patch", "delete", "post"],
        "/api/image/{image_id}/versions": ["get"],
    }.items():
        assert set(methods) <= set(paths[route]), route
    upload = paths["/api/image/{image_id}"]["post"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(
        upload["requestBody"]["content"]
    )
    assert "201" in upload["responses"]
    listing = paths["/api/images"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "count" in json.dumps(schema["components"]["schemas"]) and listing["schema"]["$ref"]
