"""The Celery application: configuration under the ``CELERY_`` namespace."""

from __future__ import annotations

import os

from celery import Celery

from baas_site import logcontext

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baas_site.settings")

app = Celery("baas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
logcontext.connect_celery()  # each task's log lines name what it works on


def _make_broker_folders() -> None:
    """kombu's filesystem transport needs its folders to exist before use."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if options.get(key):
            os.makedirs(options[key], exist_ok=True)


app.on_after_configure.connect(lambda sender, **kwargs: _make_broker_folders(), weak=False)
