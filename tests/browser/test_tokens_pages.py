"""Personal access tokens in a real browser: created (secret shown once), listed, revoked."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from accounts.models import AccessToken
from tests.accounts.factories import PASSWORD, UserFactory
from tests.browser.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_user_creates_a_token_sees_it_once_and_revokes_it(page, screenshot):
    person = UserFactory()
    sign_in(page, person.username, PASSWORD)
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("Secret").input_value()
    assert secret.startswith("baas_")
    screenshot(page, "tokens")

    bearer = {"Authorization": f"Bearer {secret}"}
    me = page.request.get("/api/user/me", headers=bearer)
    assert me.status == 200
    assert me.json()["username"] == person.username

    page.reload()
    expect(page.get_by_role("row").filter(has_text="laptop")).to_contain_text(secret[:9])
    assert secret not in page.content()

    page.get_by_role("button", name="Revoke laptop").click()
    expect(page.get_by_role("status")).to_contain_text('Token "laptop" revoked')
    assert not AccessToken.objects.filter(user=person).exists()
    assert page.request.get("/api/user/me", headers=bearer).status == 401
