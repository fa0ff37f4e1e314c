"""Imports' Celery task, declared beside the service that sends it; named here for discovery."""

from __future__ import annotations

from imports.services.jobs import import_run_task, imports_sweep_task

__all__ = ["import_run_task", "imports_sweep_task"]
