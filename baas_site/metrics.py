"""``GET /metrics``: what an operator's Prometheus scrapes.

Two kinds of figures, each with its home:

* the state of the service, read from the database at each scrape by the apps
  themselves (``catalogue.metrics``, ``flashing.metrics``): images, versions and
  their bytes, the image root's free space, machines, leases, deployments by
  state. Every web worker answers the same, and nothing in an upload or a
  deployment step counts anything;
* what this web tier served: requests by route, method and status, and their
  duration (:class:`RequestMetrics`). Under gunicorn each worker is a process:
  ``gunicorn.conf.py`` gives them a shared ``PROMETHEUS_MULTIPROC_DIR`` and the
  answer sums them (prometheus_client's multiprocess mode).

Who may scrape: clients whose address (as ``accounts.logins.client_ip`` sees it,
so behind a trusted proxy the real client) is in ``BAAS_METRICS_NETWORKS``
(loopback by default). Anyone else gets a 404, as for a page that does not exist:
the figures name no user, but say how busy and how full the lab is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from accounts.logins import address_in, client_ip
from catalogue import metrics as catalogue_metrics
from flashing import metrics as flashing_metrics
from monitoring import metrics as monitoring_metrics

REQUESTS = Counter(
    "baas_http_requests",
    "HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "baas_http_request_duration_seconds",
    "Time to answer an HTTP request (to its first byte: streamed bodies go on after).",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
BODY_BYTES = Counter(
    "baas_http_body_bytes",
    "Bytes of request bodies received (uploads) and answer bodies sent (downloads), by route, "
    "as their Content-Length says (chunked uploads: as many as were read), for successful "
    "answers.",
    ["route", "direction"],
)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class _Database(Collector):
    def collect(self) -> Iterator:
        yield from catalogue_metrics.gauges()
        yield from flashing_metrics.gauges()
        yield from monitoring_metrics.counters()


def _served_registry() -> CollectorRegistry:
    """This process's request metrics, or every gunicorn worker's in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def allowed(request: HttpRequest) -> bool:
    return address_in(client_ip(request), settings.BAAS_METRICS_NETWORKS)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format: the service's state, then what was served."""
    if not allowed(request):
        raise Http404
    database = CollectorRegistry(auto_describe=False)
    database.register(_Database())
    body = generate_latest(database) + generate_latest(_served_registry())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Count every answer by its URL pattern (never the raw path: bounded labels)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        start = time.perf_counter()
        _CountedInput.wrap(request)
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = f"/{match.route}" if match is not None and match.route else "unmatched"
        method = request.method if request.method in METHODS else "other"
        DURATION.labels(route, method).observe(time.perf_counter() - start)
        REQUESTS.labels(route, method, str(response.status_code)).inc()
        if 200 <= response.status_code < 300:
            _count_bodies(request, response, route)
        return response


class _CountedInput:
    """A chunked request body (no Content-Length; gunicorn decodes it and says so with
    ``wsgi.input_terminated``), counting what the view reads of it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    @classmethod
    def wrap(cls, request: HttpRequest) -> None:
        meta = request.META
        if meta.get("CONTENT_LENGTH") in (None, "") and meta.get("wsgi.input_terminated"):
            meta["wsgi.input"] = cls(meta["wsgi.input"])

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.readline(size)
        self.count += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _count_bodies(request: HttpRequest, response: HttpResponseBase, route: str) -> None:
    """A successful answer consumed its request's body and sends its own whole (one a
    client cuts short is counted whole); a chunked body counts what the view read of it.
    Files nginx sends (X-Accel-Redirect: its own log counts them) are not counted."""
    stream = request.META.get("wsgi.input")
    if isinstance(stream, _CountedInput):
        received = stream.count
    else:
        received = _length(request.META.get("CONTENT_LENGTH"))
    if received:
        BODY_BYTES.labels(route, "received").inc(received)
    if request.method != "HEAD" and not response.has_header("X-Accel-Redirect"):
        sent = _length(response.get("Content-Length"))
        if sent:
            BODY_BYTES.labels(route, "sent").inc(sent)


def _length(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0
