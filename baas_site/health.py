"""``GET /healthz``: is the database, the broker and the image root usable?"""

from __future__ import annotations

import os
from collections.abc import Callable

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from catalogue.storage import get_storage


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def check_broker() -> str:
    from baas_site.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
        # The filesystem transport "connects" to anything; check its folders too.
        for folder in (conn.transport_options or {}).values():
            if isinstance(folder, str) and not os.access(folder, os.W_OK):
                raise OSError(f"broker folder {folder} is not writable")
    return "ok"


def check_disk_root() -> str:
    storage = get_storage()
    storage.check_writable()
    return f"ok, {storage.free_bytes() // 2**20} MiB free"


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "broker": check_broker,
    "disk_root": check_disk_root,
}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when every check passes, 503 naming what is down."""
    results: dict[str, str] = {}
    down: list[str] = []
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as exc:  # any failure means "down", with its reason
            results[name] = f"down: {exc}"
            down.append(name)
    return JsonResponse(
        {"status": "down" if down else "ok", "down": down, "checks": results},
        status=503 if down else 200,
    )
