"""Domain errors are translated once (baas_site.errors): the same answers as DRF's exceptions.

Services raise the kinds of ``baas_site.exceptions``; the API answers each
with its status, body and headers, a page shows its sentences, and a page that
lets a not-found or not-allowed through answers Django's 404 or 403.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import RequestFactory
from rest_framework import exceptions as drf

from accounts.exceptions import LoginLocked, UserOwnsThings
from baas_site import exceptions as domain
from baas_site.errors import DomainErrorMiddleware, api_exception_handler, error_text
from catalogue.exceptions import (
    BadUpload,
    ClientDisconnected,
    ImageConflict,
    ImageNotFound,
    InsufficientStorage,
    LengthRequired,
    NotYours,
    UploadTooLarge,
)
from catalogue.services.renditions import RETRY_AFTER, RenditionNotReady
from flashing.exceptions import (
    AgentNotAuthenticated,
    DeploymentOver,
    InvalidInput,
    MachineConflict,
)

ROOT = Path(__file__).resolve().parents[2]


def answer(exc: Exception):
    response = api_exception_handler(exc, {})
    return response.status_code, response.data, dict(response.items())


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ImageNotFound(), drf.NotFound("No such image.")),
        (
            NotYours("You may read this image but not change it."),
            drf.PermissionDenied("You may read this image but not change it."),
        ),
        (
            InvalidInput({"hours": ["A lease lasts from 1 to 8 hours."]}),
            drf.ValidationError({"hours": ["A lease lasts from 1 to 8 hours."]}),
        ),
        (InvalidInput("Just a sentence."), drf.ValidationError("Just a sentence.")),
        (domain.Forbidden(), drf.PermissionDenied()),
        (domain.NotFound(), drf.NotFound()),
    ],
    ids=["not-found", "forbidden", "invalid-fields", "invalid-sentence", "bare-403", "bare-404"],
)
def test_a_domain_error_answers_as_the_drf_exception_it_stands_for(ours, theirs):
    assert answer(ours) == answer(theirs)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadUpload("The zstd data is corrupt."), 400),
        (ClientDisconnected(), 400),
        (MachineConflict("m1 is out of service (maintenance)."), 409),
        (ImageConflict(), 409),
        (DeploymentOver("Deployment #3 is done: stop."), 410),
        (LengthRequired(), 411),
        (UploadTooLarge(), 413),
        (InsufficientStorage(), 507),
    ],
)
def test_each_kind_answers_its_status_with_its_sentence_as_detail(error, status):
    code, body, _ = answer(error)
    assert (code, body) == (status, {"detail": error.detail})


def test_a_bad_upload_is_a_plain_400_without_per_field_errors():
    assert answer(BadUpload("Not qcow2."))[1] == {"detail": "Not qcow2."}
    _, body, _ = answer(InvalidInput({"mac": ["'x' is not a MAC address."]}))
    assert body == {
        "detail": "mac: 'x' is not a MAC address.",
        "errors": {"mac": ["'x' is not a MAC address."]},
    }


def test_a_wait_is_sent_as_retry_after():
    code, body, headers = answer(RenditionNotReady())
    assert (code, headers["Retry-After"]) == (409, str(RETRY_AFTER))
    code, body, headers = answer(LoginLocked("Too many failed sign-ins; wait 5 minutes.", 300))
    assert (code, body, headers["Retry-After"]) == (
        429,
        {"detail": "Too many failed sign-ins; wait 5 minutes."},
        "300",
    )


def test_an_error_that_carries_data_keeps_it_in_the_body(user):
    code, body, _ = answer(UserOwnsThings(user, ['image "disk"']))
    assert code == 409
    assert body["owns"] == ['image "disk"'] and user.username in body["detail"]


def test_a_page_shows_every_sentence_of_an_error():
    error = InvalidInput({"hours": ["Too long."], "setup": ["Empty.", "Not yours."]})
    assert error_text(error) == "Too long. Empty. Not yours."
    assert error_text(MachineConflict("Busy.")) == str(MachineConflict("Busy.")) == "Busy."


def test_a_page_that_lets_not_found_or_not_allowed_through_answers_404_or_403():
    middleware = DomainErrorMiddleware(lambda request: None)
    page = RequestFactory().get("/images/")
    with pytest.raises(Http404, match="No such image"):
        middleware.process_exception(page, ImageNotFound())
    with pytest.raises(PermissionDenied, match="not change it"):
        middleware.process_exception(page, NotYours("You may read this image but not change it."))
    assert middleware.process_exception(page, KeyError("a bug")) is None


def test_a_non_drf_api_view_that_lets_a_refusal_through_answers_json():
    middleware = DomainErrorMiddleware(lambda request: None)
    response = middleware.process_exception(RequestFactory().get("/api/x"), RenditionNotReady())
    assert response.status_code == 409 and response["Retry-After"] == str(RETRY_AFTER)


def test_services_and_selectors_raise_no_http_exception():
    """No DRF, no Http404 below the views: the kinds of baas_site.exceptions only."""
    layers = [*ROOT.glob("*/services/*.py"), *ROOT.glob("*/selectors/*.py")]
    layers += [
        ROOT / app / name
        for app in ("accounts", "flashing")
        for name in ("services.py", "selectors.py")
    ]
    offenders = [
        str(path.relative_to(ROOT))
        for path in layers
        if path.exists()
        and any(
            word in path.read_text() for word in ("rest_framework", "django.http import Http404")
        )
    ]
    assert offenders == []


def test_a_failed_authentication_answers_401_with_the_views_scheme_else_403():
    class View:
        def get_authenticate_header(self, request):
            return 'Bearer realm="api"'

    failed = AgentNotAuthenticated("Check in with the one-time boot token.")
    response = api_exception_handler(failed, {"view": View(), "request": object()})
    assert (response.status_code, response["WWW-Authenticate"]) == (401, 'Bearer realm="api"')
    assert response.data == {"detail": "Check in with the one-time boot token."}
    assert api_exception_handler(failed, {}).status_code == 403
