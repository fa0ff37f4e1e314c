"""The pipeline's steps, run in the test process: start, power, watchdog, retries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from flashing.models import AgentToken, Deployment, MachineState
from flashing.services.pipeline import (
    deployment_power,
    deployments_watchdog,
    machine_start_next,
)
from flashing.services.tokens import token_find
from tests.flashing.factories import LeaseFactory, MachineFactory
from tests.flashing.test_deployments import make_setup, queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def machine(user, tmp_path):
    out = tmp_path / "env"
    machine = MachineFactory(
        state=MachineState.LEASED,
        power_driver="command",
        power_settings={"command": f"env | grep ^BAAS_ | sort > {out}"},
    )
    machine.env_file = out
    LeaseFactory(machine=machine, user=user)
    return machine


def queued(client, machine, user, n=1):
    return [
        Deployment.objects.get(pk=queue(client, machine, make_setup(user)).json()["id"])
        for _ in range(n)
    ]


def test_the_oldest_queued_deployment_starts_and_only_one_at_a_time(user_client, user, machine):
    first, second = queued(user_client, machine, user, 2)
    assert machine_start_next(machine_id=machine.pk).pk == first.pk
    assert machine_start_next(machine_id=machine.pk) is None
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, first.attempt, second.state) == ("booting", 1, "queued")


def test_the_command_driver_gets_a_fresh_one_time_token_once_per_attempt(
    user_client, user, machine, settings
):
    settings.BAAS_PUBLIC_URL = "http://baas.test"
    (deployment,) = queued(user_client, machine, user)
    machine_start_next(machine_id=machine.pk)
    assert deployment_power(deployment_id=deployment.pk, attempt=1) == "powered"
    env = dict(line.split("=", 1) for line in machine.env_file.read_text().splitlines())
    assert env["BAAS_SERVER"] == "http://baas.test" and env["BAAS_MAC"] == machine.mac
    assert env["BAAS_DEPLOYMENT"] == str(deployment.pk)
    assert token_find(env["BAAS_TOKEN"]).kind == "boot"
    machine.env_file.unlink()
    assert deployment_power(deployment_id=deployment.pk, attempt=1) == "skipped"
    assert not machine.env_file.exists()


def test_a_machine_that_never_checks_in_is_retried_then_failed(
    user_client, user, machine, settings
):
    settings.BAAS_DEPLOY_RETRIES = 1
    settings.BAAS_BOOT_TIMEOUT = 60
    (deployment,) = queued(user_client, machine, user)
    machine_start_next(machine_id=machine.pk)
    deployment_power(deployment_id=deployment.pk, attempt=1)
    assert deployments_watchdog()["retried"] == 0  # not yet
    later = timezone.now() + timedelta(seconds=61)
    assert deployments_watchdog(now=later)["retried"] == 1
    deployment.refresh_from_db()
    assert (deployment.state, deployment.attempt) == ("booting", 2)
    assert not AgentToken.objects.filter(attempt=1, revoked_at=None).exists()
    deployments_watchdog(now=later + timedelta(seconds=61))
    deployment.refresh_from_db()
    assert deployment.state == "failed"
    assert deployment.failure_reason.startswith("Failed after 2 attempt(s)")
    assert "did not check in within 60 s" in deployment.failure_reason
    actions = list(deployment.events.values_list("action", flat=True))
    assert "retry" in actions and actions[-1] == "failed"


def test_a_failing_power_command_is_retried_then_fails_clearly(
    user_client, user, machine, settings
):
    settings.BAAS_DEPLOY_RETRIES = 0
    machine.power_settings = {"command": "echo no BMC here >&2; exit 3"}
    machine.save()
    (deployment,) = queued(user_client, machine, user)
    machine_start_next(machine_id=machine.pk)
    assert deployment_power(deployment_id=deployment.pk, attempt=1) == "failed"
    deployment.refresh_from_db()
    assert deployment.state == "failed"
    assert "exited with 3: no BMC here" in deployment.failure_reason


def test_the_watchdog_starts_queued_deployments_whose_start_was_lost(user_client, user, machine):
    (deployment,) = queued(user_client, machine, user)
    assert deployments_watchdog()["started"] == 1
    deployment.refresh_from_db()
    assert deployment.state == "booting"


def test_the_watchdog_powers_an_attempt_whose_power_task_was_lost(
    user_client, user, machine, django_capture_on_commit_callbacks
):
    from baas_site.celery import app

    (deployment,) = queued(user_client, machine, user)
    machine_start_next(machine_id=machine.pk)  # its power task is lost: on_commit never runs here
    assert deployments_watchdog()["repowered"] == 0  # within the grace period
    app.conf.task_always_eager = True
    try:
        later = timezone.now() + timedelta(seconds=31)
        # (beat runs it outside a transaction: its send leaves at once, as after this commit)
        with django_capture_on_commit_callbacks(execute=True):
            assert deployments_watchdog(now=later)["repowered"] == 1
    finally:
        app.conf.task_always_eager = False
    assert machine.env_file.exists()  # the power command ran
    deployment.refresh_from_db()
    assert deployment.powered_attempt == 1
