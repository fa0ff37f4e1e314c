"""The role table: every role against the role predicates and the rules about users.

The rules about images and setups are tested in tests/catalogue/test_rules.py,
those about machines, leases and deployments in tests/flashing/test_rules.py.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser

from accounts import rules
from accounts.exceptions import NotAllowed, UserNotFound
from accounts.models import Role
from accounts.services import token_create, token_revoke, user_create, user_delete, user_update
from tests.accounts.factories import UserFactory


@pytest.fixture
def people(db):
    return {
        "anonymous": AnonymousUser(),
        "user": UserFactory(role=Role.USER),
        "owner": UserFactory(role=Role.USER),
        "moderator": UserFactory(role=Role.MODERATOR),
        "administrator": UserFactory(role=Role.ADMINISTRATOR),
        "superuser": UserFactory(role=Role.USER, is_superuser=True),
    }


@pytest.mark.parametrize(
    ("role", "moderator", "admin", "change_roles", "create_users"),
    [
        ("anonymous", False, False, False, False),
        ("user", False, False, False, False),
        ("moderator", True, True, False, False),
        ("administrator", True, True, True, True),
        ("superuser", True, True, True, True),
    ],
)
def test_role_abilities(people, role, moderator, admin, change_roles, create_users):
    actor = people[role]
    assert rules.is_moderator(actor) is moderator
    assert rules.is_administrator(actor) is change_roles
    assert rules.can_use_admin(actor) is admin
    assert rules.can_admin_everything(actor) is change_roles
    assert rules.can_change_role(actor) is change_roles
    assert rules.can_create_user(actor) is create_users
    assert rules.can_hand_over(actor) is change_roles


@pytest.mark.parametrize("role", ["user", "moderator", "administrator"])
def test_users_manage_themselves_and_only_administrators_manage_others(people, role):
    actor = people[role]
    assert rules.can_manage_user(actor, actor)
    assert rules.can_manage_user(actor, people["owner"]) is (role == "administrator")


def test_only_an_administrator_changing_someone_else_skips_the_current_password(people):
    admin, user = people["administrator"], people["user"]
    assert not rules.needs_current_password(admin, user)
    assert rules.needs_current_password(admin, admin)
    assert rules.needs_current_password(user, user)


def test_an_inactive_administrator_has_no_rights(people):
    admin = people["administrator"]
    admin.is_active = False
    admin.save()
    assert not rules.is_administrator(admin)
    assert not rules.can_use_admin(admin)
    assert not rules.can_manage_user(admin, people["owner"])


def test_an_agent_is_no_person_whatever_it_claims(people):
    class Agent:
        is_agent = is_authenticated = is_active = is_administrator = is_moderator = True

    assert rules.is_agent(Agent())
    assert not rules.is_authenticated(Agent())
    assert not rules.is_administrator(Agent())


# --- Each service checks its rule itself --------------------------------------------------


def test_only_administrators_and_baas_itself_create_users(people):
    with pytest.raises(NotAllowed):
        user_create(actor=people["moderator"], username="newbie", email="n@example.invalid")
    assert user_create(actor=None, username="bench", email="b@example.invalid").pk
    assert user_create(actor=people["administrator"], username="hired", email="h@x.invalid").pk


def test_a_user_changed_deleted_or_given_a_token_by_someone_else_answers_as_for_no_user(people):
    owner, stranger = people["owner"], people["user"]
    token, _ = token_create(actor=owner, user=owner, name="laptop")
    for call in (
        lambda: user_update(actor=stranger, user=owner, display_name="Mallory"),
        lambda: user_delete(actor=stranger, user=owner),
        lambda: token_create(actor=stranger, user=owner, name="mine now"),
        lambda: token_revoke(actor=stranger, token=token),
    ):
        with pytest.raises(UserNotFound):
            call()
    owner.refresh_from_db()
    assert owner.display_name != "Mallory" and list(owner.access_tokens.all()) == [token]
