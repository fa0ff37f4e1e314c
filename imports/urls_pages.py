"""The import page, mounted at the site's root beside the image pages."""

from __future__ import annotations

from django.urls import path

from imports import views

urlpatterns = [
    path("images/<uuid:image_id>/import/", views.image_import, name="image-import"),
]
