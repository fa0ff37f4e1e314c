"""Accounts' API is account administration: its clients hold tokens with every scope.

New tokens get read and write only (``accounts.scopes.DEFAULT``); the tests of the
scopes themselves make their own tokens.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts import scopes
from tests.conftest import client_for


def client_with_scopes(user, wanted=scopes.ALL) -> APIClient:
    """An API client with a bearer token of ``user`` holding ``wanted`` scopes."""
    return client_for(user, wanted)


@pytest.fixture
def client_scopes() -> tuple[str, ...]:
    return scopes.ALL
