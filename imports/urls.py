"""Import routes, mounted under ``/api/``."""

from __future__ import annotations

from django.urls import path

from imports import apis

urlpatterns = [
    path("image/<uuid:image_id>/import", apis.ImageImportApi.as_view(), name="image-import"),
    path("import/<int:job_id>", apis.ImportDetailApi.as_view(), name="import-detail"),
    path("import/<int:job_id>/cancel", apis.ImportCancelApi.as_view(), name="import-cancel"),
]
