"""ASGI entry point, for completeness only.

Django under ASGI spools whole request bodies, so image uploads and downloads
must be served through WSGI (gunicorn); see docs/operations.md.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baas_site.settings")

application = get_asgi_application()
