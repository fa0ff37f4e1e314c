"""Accounts' API is account administration: its clients hold tokens with every scope.

New tokens get read and write only (``accounts.scopes.DEFAULT``); the tests of the
scopes themselves make their own tokens.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts import scopes
from accounts.services import token_create


def client_with_scopes(user, wanted=scopes.ALL) -> APIClient:
    """An API client with a bearer token of ``user`` holding ``wanted`` scopes."""
    client = APIClient()
    _, secret = token_create(actor=user, user=user, name="tests", scopes_wanted=wanted)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.user = user
    return client


@pytest.fixture
def user_client(user):
    return client_with_scopes(user)


@pytest.fixture
def other_client(other_user):
    return client_with_scopes(other_user)


@pytest.fixture
def moderator_client(moderator):
    return client_with_scopes(moderator)


@pytest.fixture
def admin_client_api(administrator):
    return client_with_scopes(administrator)
