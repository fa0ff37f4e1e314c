"""Fixtures of the flashing tests: the end-to-end rig (tests/flashing/e2e.py)."""

from __future__ import annotations

import pytest

from tests.flashing.e2e import make_rig


@pytest.fixture
def rig(celery_worker, live_server, tmp_path, administrator):
    yield from make_rig(live_server, tmp_path, administrator)
