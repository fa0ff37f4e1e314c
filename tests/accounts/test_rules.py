"""The role table: every role against every action the predicates answer."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser

from accounts import rules
from accounts.models import Role
from catalogue.models import Image, ImageType
from tests.accounts.factories import UserFactory

ROLES = ["anonymous", "user", "owner", "moderator", "maintainer", "administrator", "superuser"]


@pytest.fixture
def people(db):
    owner = UserFactory(role=Role.USER)
    maintainer = UserFactory(role=Role.MODERATOR)
    return {
        "anonymous": AnonymousUser(),
        "user": UserFactory(role=Role.USER),
        "owner": owner,
        "moderator": UserFactory(role=Role.MODERATOR),
        "maintainer": maintainer,
        "administrator": UserFactory(role=Role.ADMINISTRATOR),
        "superuser": UserFactory(role=Role.USER, is_superuser=True),
    }


def make_image(people, image_type: str, owner_role: str = "owner") -> Image:
    image = Image.objects.create(name="img", owner=people[owner_role], type=image_type)
    image.maintainers.add(people["maintainer"])
    return image


# role -> (read, write, delete) for a private image owned by "owner"
PRIVATE = {
    "anonymous": (False, False, False),
    "user": (False, False, False),
    "owner": (True, True, True),
    "moderator": (False, False, False),
    "maintainer": (True, False, False),  # maintainers are only for system images
    "administrator": (True, True, True),
    "superuser": (True, True, True),
}

# role -> (read, write, delete) for a system image owned by a moderator "owner"
SYSTEM = {
    "anonymous": (False, False, False),
    "user": (True, False, False),
    "owner": (True, True, True),
    "moderator": (True, False, False),
    "maintainer": (True, True, False),
    "administrator": (True, True, True),
    "superuser": (True, True, True),
}


@pytest.mark.parametrize("role", ROLES)
def test_private_image_rights_follow_the_role_table(people, role):
    image = make_image(people, ImageType.SINGLE)
    actor = people[role]
    got = (
        rules.can_read_image(actor, image),
        rules.can_write_image(actor, image),
        rules.can_delete_image(actor, image),
    )
    assert got == PRIVATE[role]


@pytest.mark.parametrize("role", ROLES)
def test_system_image_rights_follow_the_role_table(people, role):
    people["owner"].role = Role.MODERATOR
    people["owner"].save()
    image = make_image(people, ImageType.SYSTEM)
    actor = people[role]
    got = (
        rules.can_read_image(actor, image),
        rules.can_write_image(actor, image),
        rules.can_delete_image(actor, image),
    )
    assert got == SYSTEM[role]


def test_a_user_who_owns_a_system_image_still_cannot_change_it(people):
    image = make_image(people, ImageType.SYSTEM, owner_role="user")
    assert rules.can_read_image(people["user"], image)
    assert not rules.can_write_image(people["user"], image)
    assert not rules.can_delete_image(people["user"], image)


@pytest.mark.parametrize(
    ("role", "create_system", "create_single", "admin", "change_roles", "create_users"),
    [
        ("anonymous", False, False, False, False, False),
        ("user", False, True, False, False, False),
        ("moderator", True, True, True, False, False),
        ("administrator", True, True, True, True, True),
        ("superuser", True, True, True, True, True),
    ],
)
def test_role_abilities(
    people, role, create_system, create_single, admin, change_roles, create_users
):
    actor = people[role]
    assert rules.can_create_image(actor, ImageType.SYSTEM) is create_system
    assert rules.can_create_image(actor, ImageType.SINGLE) is create_single
    assert rules.can_change_image_type(actor, ImageType.SINGLE, ImageType.SYSTEM) is create_system
    assert rules.can_use_admin(actor) is admin
    assert rules.can_admin_everything(actor) is change_roles
    assert rules.can_change_role(actor) is change_roles
    assert rules.can_create_user(actor) is create_users
    assert rules.can_assign_maintainers(actor) is change_roles


@pytest.mark.parametrize("role", ["user", "moderator", "administrator"])
def test_users_manage_themselves_and_only_administrators_manage_others(people, role):
    actor = people[role]
    assert rules.can_manage_user(actor, actor)
    assert rules.can_manage_user(actor, people["owner"]) is (role == "administrator")


def test_an_inactive_administrator_has_no_rights(people):
    admin = people["administrator"]
    admin.is_active = False
    admin.save()
    image = make_image(people, ImageType.SINGLE)
    assert not rules.can_read_image(admin, image)
    assert not rules.can_use_admin(admin)
