"""Who may do what on every image route: the matrix, answered over the API.

Roles: anonymous, the owner of a private image (a user), another user, a
moderator, the moderator maintaining the system image, an administrator.
Private images of others answer 404, never 403, so their existence stays hidden.
"""

from __future__ import annotations

import os

import pytest

from accounts.models import Role
from catalogue.models import Image, ImageType, Version
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "owner", "other", "moderator", "maintainer", "administrator"]


@pytest.fixture
def world(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 1 << 20
    people = {
        "owner": UserFactory(role=Role.USER),
        "other": UserFactory(role=Role.USER),
        "moderator": UserFactory(role=Role.MODERATOR),
        "maintainer": UserFactory(role=Role.MODERATOR),
        "administrator": UserFactory(role=Role.ADMINISTRATOR),
    }
    private = ImageFactory(owner=people["owner"], name="private")
    system = ImageFactory(owner=people["administrator"], name="shared", type=ImageType.SYSTEM)
    system.maintainers.add(people["maintainer"])
    for image in (private, system):
        VersionFactory(image=image, number=0)
    return {"people": people, "private": private, "system": system}


def call(world, role: str, method: str, route: str):
    client = client_for(world["people"].get(role))
    owner = world["people"]["owner"].username
    path = route.format(
        owner=owner, private=world["private"].uuid, system=world["system"].uuid
    ).replace("{", "")
    if method == "upload":
        body = os.urandom(4096)
        return client.generic("POST", path, body, content_type="application/octet-stream")
    if method == "post":
        return client.post(path, {"name": "new"}, format="json")
    if method in ("put", "patch"):
        return getattr(client, method)(path, {"description": "changed"}, format="json")
    return getattr(client, method)(path)


def expect(**by_role: int) -> list[int]:
    return [by_role[role] for role in ROLES]


# Statuses in ROLES order: anonymous, owner, other, moderator, maintainer, administrator.
MATRIX = {
    ("post", "/api/user/{owner}/image"): expect(
        anonymous=401, owner=201, other=404, moderator=404, maintainer=404, administrator=201
    ),
    ("get", "/api/user/{owner}/images"): expect(
        anonymous=401, owner=200, other=404, moderator=404, maintainer=404, administrator=200
    ),
    ("get", "/api/user/{owner}/images/private"): expect(
        anonymous=401, owner=200, other=404, moderator=404, maintainer=404, administrator=200
    ),
    ("get", "/api/images"): expect(
        anonymous=401, owner=200, other=200, moderator=200, maintainer=200, administrator=200
    ),
    ("get", "/api/image/{private}"): expect(
        anonymous=401, owner=200, other=404, moderator=404, maintainer=404, administrator=200
    ),
    ("get", "/api/image/{private}/versions"): expect(
        anonymous=401, owner=200, other=404, moderator=404, maintainer=404, administrator=200
    ),
    ("patch", "/api/image/{private}"): expect(
        anonymous=401, owner=200, other=404, moderator=404, maintainer=404, administrator=200
    ),
    ("put", "/api/image/{private}"): expect(
        anonymous=401, owner=200, other=404, moderator=404, maintainer=404, administrator=200
    ),
    ("upload", "/api/image/{private}"): expect(
        anonymous=401, owner=201, other=404, moderator=404, maintainer=404, administrator=201
    ),
    ("delete", "/api/image/{private}"): expect(
        anonymous=401, owner=204, other=404, moderator=404, maintainer=404, administrator=204
    ),
    ("get", "/api/image/{system}"): expect(
        anonymous=401, owner=200, other=200, moderator=200, maintainer=200, administrator=200
    ),
    ("get", "/api/image/{system}/versions"): expect(
        anonymous=401, owner=200, other=200, moderator=200, maintainer=200, administrator=200
    ),
    ("patch", "/api/image/{system}"): expect(
        anonymous=401, owner=403, other=403, moderator=403, maintainer=200, administrator=200
    ),
    ("put", "/api/image/{system}"): expect(
        anonymous=401, owner=403, other=403, moderator=403, maintainer=200, administrator=200
    ),
    ("upload", "/api/image/{system}"): expect(
        anonymous=401, owner=403, other=403, moderator=403, maintainer=201, administrator=201
    ),
    ("delete", "/api/image/{system}"): expect(
        anonymous=401, owner=403, other=403, moderator=403, maintainer=403, administrator=204
    ),
}
CASES = [
    pytest.param(method, route, role, status, id=f"{method} {route} as {role}")
    for (method, route), statuses in MATRIX.items()
    for role, status in zip(ROLES, statuses, strict=True)
]


@pytest.mark.parametrize(("method", "route", "role", "status"), CASES)
def test_the_permissions_matrix(world, method, route, role, status):
    images_before = Image.objects.count()
    versions_before = Version.objects.count()
    response = call(world, role, method, route)
    assert response.status_code == status, response.content
    assert "detail" in response.json() if status >= 400 else True
    if status >= 400:  # a refusal changes nothing
        assert Image.objects.count() == images_before
        assert Version.objects.count() == versions_before
        for key in ("private", "system"):
            fresh = Image.objects.filter(pk=world[key].pk).first()
            assert fresh is not None and fresh.description == world[key].description


def test_a_private_image_never_shows_in_someone_elses_list(world):
    for role in ("other", "moderator", "maintainer"):
        body = call(world, role, "get", "/api/images").json()
        assert str(world["private"].uuid) not in {i["uuid"] for i in body["results"]}
        assert str(world["system"].uuid) in {i["uuid"] for i in body["results"]}


def test_malformed_usernames_are_400_and_unknown_ones_404(world):
    client = client_for(world["people"]["administrator"])
    assert client.get("/api/user/bad name!/images").status_code == 400
    assert client.get("/api/user/nobody-here/images").status_code == 404
    assert client.post("/api/user/nobody-here/image", {"name": "x"}, format="json").status_code == (
        404
    )
