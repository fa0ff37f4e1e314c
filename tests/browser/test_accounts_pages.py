"""Signing in and out, and Django admin, in a real browser."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from accounts.models import Role, User
from catalogue.models import ImageType
from tests.accounts.factories import PASSWORD, UserFactory
from tests.browser.conftest import sign_in
from tests.catalogue.factories import ImageFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_user_signs_in_sees_the_home_page_and_signs_out(page, screenshot):
    person = UserFactory(role=Role.USER, display_name="Ada Lovelace")
    page.goto("/")
    assert "/accounts/login/" in page.url
    screenshot(page, "login")
    sign_in(page, person.username, PASSWORD)
    expect(page.get_by_role("heading", name="Welcome, Ada Lovelace")).to_be_visible()
    screenshot(page, "home")
    page.get_by_role("button", name=f"Sign out {person.username}").click()
    page.wait_for_url("**/accounts/login/")


def test_a_wrong_password_shows_an_error(page):
    person = UserFactory(role=Role.USER)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert "/accounts/login/" in page.url


def test_a_user_cannot_reach_admin(page):
    person = UserFactory(role=Role.USER)
    sign_in(page, person.username, PASSWORD)
    assert page.get_by_role("link", name="Admin", exact=True).count() == 0
    page.goto("/admin/")
    assert "/admin/login/" in page.url
    expect(page.get_by_text("not authorized to access this page")).to_be_visible()


def test_an_administrator_changes_a_users_role_in_admin(page, screenshot):
    admin = UserFactory(role=Role.ADMINISTRATOR)
    target = UserFactory(role=Role.USER, username="grace")
    sign_in(page, admin.username, PASSWORD)
    page.get_by_role("link", name="Admin", exact=True).click()
    screenshot(page, "admin-index")
    page.goto("/admin/accounts/user/")
    page.get_by_role("link", name="grace").click()
    page.get_by_label("Role").select_option("moderator")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("was changed successfully")).to_be_visible()
    target.refresh_from_db()
    assert User.objects.get(pk=target.pk).role == Role.MODERATOR


def test_a_moderator_sees_only_their_system_images_in_admin(page, screenshot):
    moderator = UserFactory(role=Role.MODERATOR)
    owner = UserFactory(role=Role.ADMINISTRATOR)
    mine = ImageFactory(owner=owner, name="debian-maintained", type=ImageType.SYSTEM)
    mine.maintainers.add(moderator)
    ImageFactory(owner=owner, name="ubuntu-someone-elses", type=ImageType.SYSTEM)
    ImageFactory(owner=owner, name="private-kernel")
    sign_in(page, moderator.username, PASSWORD)
    page.goto("/admin/")
    assert page.get_by_role("link", name="Users").count() == 0
    assert page.get_by_role("link", name="Machines").count() == 0
    page.get_by_role("link", name="Images", exact=True).click()
    page.wait_for_url("**/admin/catalogue/image/")
    expect(page.get_by_role("link", name="debian-maintained")).to_be_visible()
    expect(page.get_by_text("ubuntu-someone-elses")).to_have_count(0)
    expect(page.get_by_text("private-kernel")).to_have_count(0)
    screenshot(page, "admin-moderator-images")
    page.get_by_role("link", name="debian-maintained").click()
    page.get_by_label("Description").fill("The lab's Debian")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("was changed successfully")).to_be_visible()
    mine.refresh_from_db()
    assert mine.description == "The lab's Debian"
    assert page.goto("/admin/accounts/user/").status == 403
