"""Storage used per image and per user, as its owner and administrators see it: the bytes the
files really take on disk (holes cost nothing)."""

from __future__ import annotations

import os

import pytest

from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.conftest import allocated

pytestmark = pytest.mark.django_db

MiB = 1 << 20


def on_disk(image) -> int:
    return allocated(image)


@pytest.fixture
def images(user):
    """Two images of ``user``: one sparse (mostly holes), one of plain data."""
    sparse = ImageFactory(owner=user, name="a-sparse")
    VersionFactory(image=sparse, number=0, content=bytes(8 * MiB))
    VersionFactory(image=sparse, number=1, content=os.urandom(MiB) + bytes(7 * MiB))
    dense = ImageFactory(owner=user, name="b-dense")
    VersionFactory(image=dense, number=0, content=os.urandom(3 * MiB))
    return sparse, dense


def test_an_images_storage_used_is_what_its_files_take_on_disk(user_client, images):
    sparse, dense = images
    for image in images:
        detail = user_client.get(f"/api/image/{image.uuid}").json()
        assert detail["storage_used"] == on_disk(image)
    assert MiB <= on_disk(sparse) < 2 * MiB  # 16 MiB of versions, mostly holes
    assert on_disk(dense) >= 3 * MiB


def test_an_upload_counts_what_it_stores(user_client, user):
    image = ImageFactory(owner=user)
    VersionFactory(image=image, number=0, content=b"")
    body = os.urandom(MiB) + bytes(4 * MiB) + os.urandom(5000)
    response = user_client.generic(
        "POST", f"/api/image/{image.uuid}", body, "application/octet-stream"
    )
    assert response.status_code == 201
    assert user_client.get(f"/api/image/{image.uuid}").json()["storage_used"] == on_disk(image)


def test_the_owner_sees_their_usage_image_by_image(user_client, user, images):
    sparse, dense = images
    ImageFactory(name="someone-elses")  # not counted
    response = user_client.get(f"/api/user/{user.username}/usage")
    assert response.status_code == 200
    body = response.json()
    assert body["used"] == on_disk(sparse) + on_disk(dense)
    assert body["quota"] is None
    assert [(i["name"], i["versions"], i["storage_used"]) for i in body["images"]] == [
        ("a-sparse", 2, on_disk(sparse)),
        ("b-dense", 1, on_disk(dense)),
    ]


def test_an_administrator_sees_anyones_usage_and_nobody_else_does(
    user, images, admin_client_api, other_client, moderator_client, anon_client
):
    url = f"/api/user/{user.username}/usage"
    assert admin_client_api.get(url).json()["used"] == sum(map(on_disk, images))
    assert other_client.get(url).status_code == 404
    assert moderator_client.get(url).status_code == 404
    assert anon_client.get(url).status_code in (401, 403)


def test_a_user_without_images_uses_nothing(user_client, user):
    assert user_client.get(f"/api/user/{user.username}/usage").json() == {
        "used": 0,
        "held": 0,
        "quota": None,
        "images": [],
    }


def test_usage_takes_the_same_queries_for_one_image_or_many(
    user_client, user, django_assert_num_queries
):
    url = f"/api/user/{user.username}/usage"
    user_client.get(url)  # the token's first use records it; later ones do not
    for n in range(5):
        VersionFactory(image=ImageFactory(owner=user), number=0, content=bytes([n + 1]) * 4096)
    # token+user, the user, the total, the images with their totals, their versions' files
    with django_assert_num_queries(5):
        response = user_client.get(url)
    assert len(response.json()["images"]) == 5


def test_the_image_list_shows_storage_used_without_more_queries(
    user_client, user, images, django_assert_num_queries
):
    user_client.get("/api/images")
    with django_assert_num_queries(6):
        first = user_client.get("/api/images").json()
    for n in range(5):
        VersionFactory(image=ImageFactory(owner=user), number=0, content=bytes([n + 1]) * 4096)
    with django_assert_num_queries(6):
        response = user_client.get("/api/images").json()
    assert first["count"] == 2
    used = {i["uuid"]: i["storage_used"] for i in response["results"]}
    assert used[str(images[0].uuid)] == on_disk(images[0])
    assert len(used) == 7
