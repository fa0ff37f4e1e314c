from __future__ import annotations

import pytest
from django.http import HttpRequest

from accounts.models import AuditEvent, Role
from tests.accounts.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "superuser", "allowed"),
    [
        (Role.USER, False, False),
        (Role.MODERATOR, False, True),
        (Role.ADMINISTRATOR, False, True),
        (Role.USER, True, True),
    ],
)
def test_administrators_and_moderators_reach_django_admin(client, role, superuser, allowed):
    person = UserFactory(role=role, is_superuser=superuser)
    assert client.login(request=HttpRequest(), username=person.username, password=PASSWORD)
    response = client.get("/admin/")
    if allowed:
        assert response.status_code == 200
    else:
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


@pytest.mark.parametrize(
    "url",
    [
        "/admin/accounts/user/",
        "/admin/accounts/accesstoken/",
        "/admin/accounts/auditevent/",
        "/admin/auth/group/",
        "/admin/catalogue/imagesetup/",
        "/admin/flashing/machine/",
        "/admin/flashing/lease/",
        "/admin/flashing/deployment/",
        "/admin/flashing/unknownmac/",
    ],
)
def test_moderators_see_no_users_tokens_setups_or_machines(client, url):
    moderator = UserFactory(role=Role.MODERATOR)
    client.force_login(moderator)
    assert client.get(url).status_code == 403
    administrator = UserFactory(role=Role.ADMINISTRATOR)
    client.force_login(administrator)
    assert client.get(url).status_code == 200


def test_a_moderators_admin_index_lists_only_images_and_versions(client):
    client.force_login(UserFactory(role=Role.MODERATOR))
    page = client.get("/admin/").content.decode()
    assert 'href="/admin/catalogue/image/"' in page
    assert 'href="/admin/catalogue/version/"' in page
    for hidden in ("accounts/user", "flashing/machine", "catalogue/imagesetup", "auth/group"):
        assert f"/admin/{hidden}/" not in page, hidden


def test_a_moderator_granted_django_permissions_still_sees_no_users(client):
    from django.contrib.auth.models import Permission

    moderator = UserFactory(role=Role.MODERATOR)
    moderator.user_permissions.add(*Permission.objects.filter(codename__endswith="_user"))
    client.force_login(moderator)
    assert client.get("/admin/accounts/user/").status_code == 403


def test_the_admin_login_form_refuses_plain_users(client):
    person = UserFactory(role=Role.USER)
    response = client.post(
        "/admin/login/?next=/admin/", {"username": person.username, "password": PASSWORD}
    )
    assert response.status_code == 200  # the form again, with an error
    assert "Please enter the correct username and password" in response.content.decode()
    assert client.get("/admin/").status_code == 302


def test_the_admin_login_form_lets_moderators_in(client):
    person = UserFactory(role=Role.MODERATOR)
    response = client.post(
        "/admin/login/?next=/admin/", {"username": person.username, "password": PASSWORD}
    )
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_an_administrator_changes_a_role_in_admin(client):
    admin = UserFactory(role=Role.ADMINISTRATOR)
    target = UserFactory(role=Role.USER)
    assert client.login(request=HttpRequest(), username=admin.username, password=PASSWORD)
    response = client.post(
        f"/admin/accounts/user/{target.pk}/change/",
        {
            "username": target.username,
            "display_name": target.display_name,
            "email": target.email,
            "role": "moderator",
            "is_active": "on",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    target.refresh_from_db()
    assert target.role == Role.MODERATOR
    event = AuditEvent.objects.get(action="user.role", target_id=str(target.pk))
    assert (event.actor, event.data) == (admin, {"old": "user", "new": "moderator"})


def test_dashboard_sign_in_and_out(client):
    person = UserFactory(role=Role.USER)
    assert client.get("/").status_code == 302
    response = client.post("/accounts/login/", {"username": person.username, "password": PASSWORD})
    assert response.status_code == 302
    assert person.username in client.get("/").content.decode()
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


@pytest.mark.parametrize(
    ("role", "shown"), [(Role.USER, False), (Role.MODERATOR, True), (Role.ADMINISTRATOR, True)]
)
def test_the_admin_link_is_shown_to_those_who_may_enter(client, role, shown):
    person = UserFactory(role=role)
    assert client.login(request=HttpRequest(), username=person.username, password=PASSWORD)
    assert ('href="/admin/"' in client.get("/").content.decode()) is shown
