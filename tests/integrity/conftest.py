"""Fixtures of the integrity tests: Celery jobs wait in memory until the test runs them."""

from __future__ import annotations

import pytest

from tests.celery_worker import _reset_producers
from tests.integrity.world import forget_pending_jobs


@pytest.fixture(autouse=True)
def memory_broker(settings):
    """Tasks are sent to an in-memory broker; ``world.run_pending_jobs`` is the worker."""
    from baas_site.celery import app

    saved = {key: app.conf[key] for key in ("broker_url", "task_always_eager")}
    app.conf.update(broker_url="memory://", task_always_eager=False)
    _reset_producers(app)
    forget_pending_jobs()
    yield
    forget_pending_jobs()
    app.conf.update(saved)
    _reset_producers(app)
