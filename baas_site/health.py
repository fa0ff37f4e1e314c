"""``GET /healthz``: is the database, the broker and the image root usable?"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


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
    root = settings.BAAS_DISK_ROOT
    if not root.is_dir():
        raise OSError(f"{root} does not exist")
    if not os.access(root, os.W_OK):
        raise OSError(f"{root} is not writable")
    free = shutil.disk_usage(root).free
    return f"ok, {free // 2**20} MiB free"


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
