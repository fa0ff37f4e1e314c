"""Changing a password or email: the current password, and what a new password revokes."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import AccessToken, AuditEvent, Role
from accounts.services import token_create
from tests.accounts.conftest import client_with_scopes
from tests.accounts.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

NEW = "a brand new passphrase"


def change(client, user, **payload):
    return client.patch(f"/api/user/{user.username}", payload, format="json")


def bearer(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_a_token_alone_cannot_change_the_password(user_client, user):
    response = change(user_client, user, password=NEW)
    assert response.status_code == 400
    assert "current password" in response.json()["detail"]
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_a_wrong_current_password_changes_nothing(user_client, user):
    response = change(user_client, user, password=NEW, current_password="not it")
    assert response.status_code == 400
    assert response.json()["detail"] == "current_password: The current password is not right."
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_guessing_the_current_password_meets_the_sign_in_lock_out(user_client, user, settings):
    settings.AXES_FAILURE_LIMIT = 5
    codes = [
        change(user_client, user, password=NEW, current_password=f"guess {i}").status_code
        for i in range(6)
    ]
    assert codes == [400] * 5 + [429]
    right = change(user_client, user, password=NEW, current_password=PASSWORD)
    assert right.status_code == 429
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_a_new_password_revokes_every_token_and_session(user, anon_client):
    _, laptop = token_create(actor=user, user=user, name="laptop")
    browser = Client()
    browser.force_login(user)
    client = client_with_scopes(user)
    response = change(client, user, password=NEW, current_password=PASSWORD)
    assert response.status_code == 200
    assert not AccessToken.objects.filter(user=user).exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"user.password", "token.revoke_all"} <= actions
    assert client.get("/api/user/me").status_code == 401  # the token that asked, too
    assert bearer(laptop).get("/api/user/me").status_code == 401
    assert browser.get("/tokens/").status_code == 302  # signed out
    login = {"username": user.username, "password": NEW}
    assert anon_client.post("/api/auth/token", login, format="json").status_code == 201


def test_tokens_can_be_kept_on_request(user):
    _, laptop = token_create(actor=user, user=user, name="laptop")
    client = client_with_scopes(user)
    payload = {"password": NEW, "current_password": PASSWORD, "revoke_tokens": False}
    assert change(client, user, **payload).status_code == 200
    assert bearer(laptop).get("/api/user/me").status_code == 200
    assert client.get("/api/user/me").status_code == 200


def test_a_new_email_needs_the_current_password_and_keeps_tokens(user_client, user):
    assert change(user_client, user, email="new@example.org").status_code == 400
    ok = change(user_client, user, email="new@example.org", current_password=PASSWORD)
    assert (ok.status_code, ok.json()["email"]) == (200, "new@example.org")
    assert user_client.get("/api/user/me").status_code == 200


def test_other_changes_need_no_password(user_client, user):
    assert change(user_client, user, name="Ada L.").json()["name"] == "Ada L."
    assert change(user_client, user, email=user.email.upper()).status_code == 200


def test_an_administrator_sets_another_users_password_and_their_tokens_end(admin_client_api, user):
    _, laptop = token_create(actor=user, user=user, name="laptop")
    assert change(admin_client_api, user, password=NEW).status_code == 200
    user.refresh_from_db()
    assert user.check_password(NEW)
    assert bearer(laptop).get("/api/user/me").status_code == 401


def test_an_administrator_changing_their_own_password_gives_the_current_one(
    admin_client_api, administrator
):
    assert change(admin_client_api, administrator, password=NEW).status_code == 400


def test_a_session_that_changes_its_password_stays_signed_in(user):
    browser = APIClient()
    browser.force_login(user)
    response = change(browser, user, password=NEW, current_password=PASSWORD)
    assert response.status_code == 200
    assert browser.get("/api/user/me").status_code == 200


def test_the_admins_password_page_revokes_the_users_tokens(admin_web, db):
    person = UserFactory(role=Role.USER)
    _, laptop = token_create(actor=person, user=person, name="laptop")
    url = f"/admin/accounts/user/{person.pk}/password/"
    response = admin_web.post(url, {"password1": NEW, "password2": NEW, "usable_password": "true"})
    assert response.status_code == 302
    person.refresh_from_db()
    assert person.check_password(NEW)
    assert bearer(laptop).get("/api/user/me").status_code == 401


def test_the_admins_own_password_page_revokes_their_tokens(db):
    administrator = UserFactory(role=Role.ADMINISTRATOR)
    _, laptop = token_create(actor=administrator, user=administrator, name="laptop")
    web = Client()
    web.force_login(administrator)
    response = web.post(
        "/admin/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW},
    )
    assert response.status_code == 302
    administrator.refresh_from_db()
    assert administrator.check_password(NEW)
    assert bearer(laptop).get("/api/user/me").status_code == 401
