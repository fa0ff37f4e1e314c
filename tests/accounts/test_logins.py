"""One lock-out for every sign-in path: the API's token endpoint, the web form, the admin."""

from __future__ import annotations

import time

import pytest
from axes.models import AccessAttempt
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import AccessToken, Role
from tests.accounts.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

PROXY = "10.0.0.5"


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.AXES_FAILURE_LIMIT = 10
    settings.BAAS_LOGIN_COOLOFF_MINUTES = 15
    settings.BAAS_TRUSTED_PROXIES = []


@pytest.fixture
def ada(db):
    return UserFactory(username="ada", role=Role.ADMINISTRATOR)


def token_login(username, password, *, remote="192.0.2.9", forwarded=None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return APIClient().post(
        "/api/auth/token", {"username": username, "password": password}, format="json", **extra
    )


def test_a_new_forwarded_for_on_each_guess_does_not_escape_the_lock_out(ada):
    codes = [
        token_login("ada", f"guess {i}", forwarded=f"203.0.113.{i}").status_code for i in range(30)
    ]
    assert codes == [401] * 10 + [429] * 20
    right = token_login("ada", PASSWORD, forwarded="198.51.100.77")
    assert right.status_code == 429
    assert right["Content-Type"] == "application/json"
    assert right.json()["detail"].startswith("Too many failed sign-ins")
    assert "Try again in 15 minutes" in right.json()["detail"]
    assert right["Retry-After"] == "900"
    assert not AccessToken.objects.exists()


def test_an_address_guessing_many_usernames_is_locked_out(ada):
    for i in range(10):
        assert token_login(f"nobody{i}", "guess", forwarded=f"203.0.113.{i}").status_code == 401
    assert token_login("ada", PASSWORD, forwarded="203.0.113.99").status_code == 429
    # Ada, from elsewhere, is not locked out: only that address is.
    assert token_login("ada", PASSWORD, remote="192.0.2.10").status_code == 201


def test_behind_a_trusted_proxy_two_clients_are_counted_apart(ada, settings):
    settings.BAAS_TRUSTED_PROXIES = ["10.0.0.0/8"]
    for i in range(10):
        response = token_login(f"nobody{i}", "guess", remote=PROXY, forwarded="198.51.100.1")
        assert response.status_code == 401
    locked = token_login("ada", PASSWORD, remote=PROXY, forwarded="198.51.100.1")
    assert locked.status_code == 429
    other = token_login("ada", PASSWORD, remote=PROXY, forwarded="198.51.100.2")
    assert other.status_code == 201


def test_a_trusted_proxy_counts_the_address_it_saw_not_what_the_client_claimed(ada, settings):
    settings.BAAS_TRUSTED_PROXIES = ["10.0.0.0/8"]
    for i in range(10):
        # The client sends a made-up address first; the proxy appends the real one.
        claimed = f"203.0.113.{i}, 198.51.100.1"
        assert token_login(f"nobody{i}", "x", remote=PROXY, forwarded=claimed).status_code == 401
    assert token_login("ada", PASSWORD, remote=PROXY, forwarded="198.51.100.1").status_code == 429


def test_the_web_form_locks_out_with_a_page_that_says_when_to_try_again(ada):
    browser = Client(REMOTE_ADDR="192.0.2.9")
    for _ in range(9):
        page = browser.post("/accounts/login/", {"username": "ada", "password": "guess"})
        assert page.status_code == 200  # the form again, with its error
    page = browser.post("/accounts/login/", {"username": "ada", "password": "guess"})
    assert page.status_code == 429
    assert page["Content-Type"].startswith("text/html")
    assert b"Try again in 15 minutes" in page.content
    right = browser.post("/accounts/login/", {"username": "ada", "password": PASSWORD})
    assert right.status_code == 429
    assert "_auth_user_id" not in browser.session
    # The API refuses too: it is one lock-out.
    assert token_login("ada", PASSWORD, remote="192.0.2.50").status_code == 429


def test_the_admin_sign_in_is_locked_out_too(ada):
    browser = Client(REMOTE_ADDR="192.0.2.9")
    for _ in range(10):
        browser.post("/admin/login/?next=/admin/", {"username": "ada", "password": "guess"})
    right = browser.post("/admin/login/?next=/admin/", {"username": "ada", "password": PASSWORD})
    assert right.status_code == 429
    assert b"Too many failed sign-ins" in right.content
    assert browser.get("/admin/").status_code == 302  # still signed out


def test_guesses_at_the_api_lock_the_web_form(ada):
    for i in range(10):
        token_login("ada", "guess", forwarded=f"203.0.113.{i}")
    page = Client(REMOTE_ADDR="192.0.2.77").post(
        "/accounts/login/", {"username": "ada", "password": PASSWORD}
    )
    assert page.status_code == 429


def test_the_lock_out_ends_after_the_cool_off(ada, settings):
    settings.BAAS_LOGIN_COOLOFF_MINUTES = 1 / 60  # one second
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(3):
        token_login("ada", "guess")
    assert token_login("ada", PASSWORD).status_code == 429
    time.sleep(1.2)
    assert token_login("ada", PASSWORD).status_code == 201


def test_an_administrator_lifts_a_lock_out_in_the_admin(ada, admin_web):
    for i in range(10):
        token_login("ada", "guess", forwarded=f"203.0.113.{i}")
    assert token_login("ada", PASSWORD).status_code == 429
    listing = admin_web.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert b"ada" in listing.content
    ids = [str(pk) for pk in AccessAttempt.objects.values_list("pk", flat=True)]
    admin_web.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )
    assert token_login("ada", PASSWORD).status_code == 201
