"""Schemathesis against the OpenAPI schema, as a user and as an administrator: no 5xx, ever.

Every operation of ``/api/schema/`` gets a few generated requests (a fixed
seed: the same requests on every run), sent in-process to the WSGI app with a
personal access token. Path parameters are either generated or taken from
real objects (the caller's own username, an image, a setup, a machine, a
deployment, a spare token), so requests reach the code behind the 404s.

Each request runs in a savepoint that is rolled back after it, so every one
starts from the same seeded data: a request that deletes its caller, revokes
the running token or changes the caller's role or password affects only
itself, and the run never loses its credentials.

Asserted: no answer is a 5xx. Answers that break the schema's promises are
asserted for the checks listed in ``CHECKS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import Role
from accounts.services import token_create
from catalogue.services.images import image_create
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import ImageFrozenFactory, ImageSetupFactory, VersionFactory
from tests.flashing.factories import DeploymentFactory, LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 10  # per operation and caller: ~60 operations x 2 callers in about a minute
CHECKS = [
    not_a_server_error,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
]

# A resumable upload's append sends bytes, as an octet-stream body does.
schemathesis.serializer.alias("application/partial-upload", "application/octet-stream")


class _Rollback(Exception):
    """Ends an example's savepoint: nothing it did stays."""


@dataclass
class Run:
    """One caller's run: its token, the real objects to name, what failed."""

    token: str
    contexts: list[dict[str, Any]]
    failures: list[str] = field(default_factory=list)
    requests: int = 0


def buffered(app: Callable[..., list[bytes]]) -> Callable[..., list[bytes]]:
    """``app`` answering whole bodies, closing each response (and its open image file)."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        response = app(environ, start_response)
        try:
            return [b"".join(response)]
        finally:
            response.close()

    return wsgi


@pytest.fixture
def wsgi_app() -> Iterator[Callable[..., list[bytes]]]:
    """The WSGI app inside the test's transaction (as Django's test client does it)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield buffered(WSGIHandler())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def schema(user_client) -> Any:
    document = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    return schemathesis.openapi.from_dict(document)


def objects_of(owner: Any, machine: Any, deployment: Any) -> dict[str, Any]:
    """Path values naming ``owner``'s objects: an image with versions 0 and 1, a setup, a token."""
    image = image_create(actor=owner, owner=owner, name=f"disk-of-{owner.username}")
    version = VersionFactory(image=image, number=1)
    setup = ImageSetupFactory(owner=owner)
    ImageFrozenFactory(setup=setup, version=version)
    spare, _ = token_create(actor=owner, user=owner, name="spare")
    return {
        "username": owner.username,
        "image_id": str(image.uuid),
        "image_uuid": str(image.uuid),
        "number": 1,
        "image_name": image.name,
        "setup_uuid": str(setup.uuid),
        "mac": machine.mac,
        "deployment_id": deployment.pk,
        "token_id": spare.pk,
    }


def seeded_run(role: str, settings_: Any) -> Run:
    """A caller with a token, and real objects of its own and of another user to name."""
    settings_.BAAS_NEW_IMAGE_SIZE = 1 << 20
    caller = UserFactory(role=role)
    other = UserFactory(role=Role.USER)
    _, secret = token_create(actor=caller, user=caller, name="schemathesis")
    machine = MachineFactory()
    LeaseFactory(machine=machine, user=caller)
    deployment = DeploymentFactory(machine=machine, requested_by=caller)
    # The caller's own objects first: Hypothesis tries the first choice most.
    contexts = [objects_of(caller, machine, deployment), objects_of(other, machine, deployment)]
    return Run(token=secret, contexts=contexts)


def real_path_parameters(operation: Any, run: Run) -> st.SearchStrategy[dict[str, Any]]:
    """One owner's objects, for the path parameters ``operation`` has."""
    names = [p.name for p in operation.path_parameters]
    return st.sampled_from(
        [{name: objects[name] for name in names if name in objects} for objects in run.contexts]
    )


def exercise(operation: Any, run: Run, app: Callable[..., list[bytes]]) -> None:
    """Send MAX_EXAMPLES generated requests for ``operation``; record what fails."""
    strategy = operation.as_strategy()
    paths = real_path_parameters(operation, run)

    @given(case=strategy, use_real=st.booleans(), real=paths)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any, use_real: bool, real: dict[str, Any]) -> None:
        if use_real and real:
            case.path_parameters = {**(case.path_parameters or {}), **real}
        run.requests += 1
        try:
            with transaction.atomic():
                response = case.call(app=app, headers={"Authorization": f"Bearer {run.token}"})
                try:
                    case.validate_response(response, checks=CHECKS)
                except FailureGroup as failure:
                    run.failures.append(f"{case.as_curl_command()}\n{failure}")
                raise _Rollback
        except _Rollback:
            pass

    one()


def run_all(schema: Any, run: Run, app: Callable[..., list[bytes]]) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == "HEAD":
            continue
        exercise(operation, run, app)


@pytest.mark.parametrize("role", [Role.USER, Role.ADMINISTRATOR])
def test_no_generated_request_makes_the_server_fail(role, schema, wsgi_app, settings, caplog):
    run = seeded_run(role, settings)
    with caplog.at_level(logging.ERROR, logger="django.request"):
        run_all(schema, run, wsgi_app)
    assert run.requests > 100
    tracebacks = "\n".join(r.getMessage() + "\n" + (r.exc_text or "") for r in caplog.records)
    assert not run.failures, "\n\n".join(run.failures[:200]) + "\n\nLogged:\n" + tracebacks[:20000]
