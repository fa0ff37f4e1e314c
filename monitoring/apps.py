from __future__ import annotations

from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        # Count every Celery task's end, in whichever process runs it (monitoring.tasks).
        from monitoring.tasks import connect_celery

        connect_celery()
