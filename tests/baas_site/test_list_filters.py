"""Every list filters and orders the same way: a bad value is a 400 naming the parameter."""

from __future__ import annotations

import pytest

from accounts.services import token_create
from catalogue.models import ImageType
from flashing.models import Architecture, DeploymentState, MachineState
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, VersionFactory
from tests.flashing.factories import DeploymentFactory, MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def lists(user):
    """Each list's URL, with something in it for ``user``."""
    image = ImageFactory(owner=user, name="debian")
    VersionFactory(image=image, number=0)
    return {
        "images": "/api/images",
        "user images": f"/api/user/{user.username}/images",
        "user images by name": f"/api/user/{user.username}/images/debian",
        "versions": f"/api/image/{image.uuid}/versions",
        "setups": f"/api/user/{user.username}/image_setups",
        "machines": "/api/machines",
        "deployments": "/api/deployments",
        "users": "/api/users",
        "tokens": f"/api/user/{user.username}/tokens",
    }


BAD_CHOICES = [
    ("images", "type", "nonsense"),
    ("user images", "type", "nonsense"),
    ("user images by name", "type", "nonsense"),
    ("machines", "state", "bogus"),
    ("machines", "architecture", "z80"),
    ("deployments", "state", "bogus"),
]


@pytest.mark.parametrize(("name", "parameter", "value"), BAD_CHOICES)
def test_a_value_outside_a_filters_choices_is_a_400_naming_it(
    user_client, lists, name, parameter, value
):
    response = user_client.get(f"{lists[name]}?{parameter}={value}")
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body["errors"]) == [parameter]
    assert body["detail"].startswith(f"{parameter}: ")
    assert value in body["detail"]


@pytest.mark.parametrize(
    "name",
    [
        "images",
        "user images",
        "user images by name",
        "versions",
        "setups",
        "machines",
        "deployments",
        "users",
        "tokens",
    ],
)
def test_every_list_refuses_to_order_by_a_field_it_does_not_offer(user_client, lists, name):
    response = user_client.get(f"{lists[name]}?ordering=-password")
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body["errors"]) == ["ordering"]
    assert "'-password' is not a field this list can be ordered by" in body["detail"]


def test_an_empty_filter_value_filters_nothing(user_client, lists):
    MachineFactory(name="a", state=MachineState.AVAILABLE)
    assert len(user_client.get("/api/machines?state=").json()["results"]) == 1
    assert user_client.get("/api/images?type=").json()["count"] == 1


def test_images_are_ordered_as_asked(user_client, user):
    for name in ("b", "c", "a"):
        ImageFactory(owner=user, name=name)
    names = [i["name"] for i in user_client.get("/api/images?ordering=-name").json()["results"]]
    assert names == ["c", "b", "a"]
    mine = user_client.get(f"/api/user/{user.username}/images?ordering=-created_at").json()[
        "results"
    ]
    assert [i["name"] for i in mine] == ["a", "c", "b"]


def test_image_filters_narrow_only_what_the_caller_may_read(user_client, user, other_user):
    ImageFactory(owner=other_user, name="secret")
    ImageFactory(owner=other_user, name="shared", type=ImageType.SYSTEM)
    ImageFactory(owner=user, name="mine", type=ImageType.BOOT)
    by_owner = user_client.get(f"/api/images?owner={other_user.username}").json()
    assert [i["name"] for i in by_owner["results"]] == ["shared"]
    assert user_client.get("/api/images?name=secret").json()["count"] == 0
    assert user_client.get("/api/images?search=ecre").json()["count"] == 0
    boot = user_client.get(f"/api/user/{user.username}/images?type=boot").json()["results"]
    assert [i["name"] for i in boot] == ["mine"]


def test_versions_are_ordered_as_asked(user_client, user):
    image = ImageFactory(owner=user)
    for number in (0, 1, 2):
        VersionFactory(image=image, number=number)
    url = f"/api/image/{image.uuid}/versions"
    assert [v["number"] for v in user_client.get(url).json()["results"]] == [0, 1, 2]
    assert [v["number"] for v in user_client.get(f"{url}?ordering=-number").json()["results"]] == [
        2,
        1,
        0,
    ]


def test_setups_are_ordered_as_asked(user_client, user):
    for name in ("b", "a", "c"):
        ImageSetupFactory(owner=user, name=name)
    url = f"/api/user/{user.username}/image_setups"
    assert [s["name"] for s in user_client.get(url).json()["results"]] == ["a", "b", "c"]
    assert [s["name"] for s in user_client.get(f"{url}?ordering=-name").json()["results"]] == [
        "c",
        "b",
        "a",
    ]


def test_machines_filter_by_architecture_and_order_as_asked(user_client):
    MachineFactory(name="a", architecture=Architecture.X86_64)
    MachineFactory(name="b", architecture=Architecture.AARCH64, state=MachineState.MAINTENANCE)
    MachineFactory(name="c", architecture=Architecture.AARCH64)
    arm = user_client.get("/api/machines?architecture=aarch64&ordering=-name").json()["results"]
    assert [m["name"] for m in arm] == ["c", "b"]
    both = user_client.get("/api/machines?architecture=aarch64&state=maintenance").json()["results"]
    assert [m["name"] for m in both] == ["b"]


def test_deployments_filter_by_machine_and_state_and_order_as_asked(user_client, user):
    first, second = MachineFactory(), MachineFactory()
    a = DeploymentFactory(requested_by=user, machine=first)
    b = DeploymentFactory(requested_by=user, machine=second, state=DeploymentState.CANCELLED)
    DeploymentFactory(machine=first)  # someone else's: never listed
    ids = [d["id"] for d in user_client.get("/api/deployments").json()["results"]]
    assert ids == [b.pk, a.pk]
    assert [
        d["id"] for d in user_client.get("/api/deployments?ordering=created_at").json()["results"]
    ] == [
        a.pk,
        b.pk,
    ]
    on_first = user_client.get(f"/api/deployments?machine={first.mac.upper()}").json()["results"]
    assert [d["id"] for d in on_first] == [a.pk]
    cancelled = user_client.get("/api/deployments?state=cancelled").json()["results"]
    assert [d["id"] for d in cancelled] == [b.pk]


def test_deployments_for_a_malformed_or_unknown_machine_are_400_and_404(user_client):
    assert user_client.get("/api/deployments?machine=not-a-mac").status_code == 400
    assert user_client.get("/api/deployments?machine=52:54:00:00:99:99").status_code == 404


def test_users_and_tokens_are_ordered_as_asked(user_client, user):
    UserFactory(username="zed")
    names = [
        u["username"] for u in user_client.get("/api/users?ordering=-username").json()["results"]
    ]
    assert names == sorted(names, reverse=True)
    for name in ("b", "a"):
        token_create(actor=user, user=user, name=name)
    url = f"/api/user/{user.username}/tokens"
    assert [t["name"] for t in user_client.get(url).json()["results"]][:2] == [
        "a",
        "b",
    ]  # newest first
    tokens = [t["name"] for t in user_client.get(f"{url}?ordering=name").json()["results"]]
    assert tokens == sorted(tokens)
    assert tokens.index("a") < tokens.index("b")


def test_the_schema_names_each_lists_filters_with_their_choices(user_client):
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    def parameters(path):
        return {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}

    machines = parameters("/api/machines")
    assert set(machines["state"]["enum"]) == set(MachineState.values)
    assert set(machines["architecture"]["enum"]) == set(Architecture.values)
    assert machines["ordering"]["items"]["enum"][:2] == ["name", "-name"]
    assert set(parameters("/api/deployments")["state"]["enum"]) == set(DeploymentState.values)
    images = parameters("/api/images")
    assert set(images["type"]["enum"]) == set(ImageType.values)
    assert {"name", "search", "owner", "limit", "offset", "ordering"} <= set(images)
    assert "-password" not in parameters("/api/users")["ordering"]["items"]["enum"]
