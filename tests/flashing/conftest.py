"""Fixtures of the flashing tests: the end-to-end rig (tests/flashing/e2e.py)."""

from __future__ import annotations

import pytest

from flashing.models import MachineState
from tests.flashing.e2e import make_rig
from tests.flashing.factories import LeaseFactory, MachineFactory


@pytest.fixture
def machine(user):
    """A machine leased by ``user``."""
    machine = MachineFactory(state=MachineState.LEASED)
    LeaseFactory(machine=machine, user=user)
    return machine


@pytest.fixture
def rig(celery_worker, live_server, tmp_path, administrator):
    yield from make_rig(live_server, tmp_path, administrator)


# ``start_worker`` (killable workers of a test's own) comes from tests/celery_worker.py.
