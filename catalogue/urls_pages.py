"""Dashboard pages for images and setups, mounted at the site's root."""

from __future__ import annotations

from django.urls import path

from catalogue import views

urlpatterns = [
    path("images/", views.image_list, name="images"),
    path("images/new/", views.image_create, name="image-new"),
    path("images/<uuid:image_id>/", views.image_detail, name="image"),
    path("images/<uuid:image_id>/edit/", views.image_edit, name="image-edit"),
    path("images/<uuid:image_id>/delete/", views.image_delete, name="image-delete"),
    path("client/baas-upload", views.upload_client, name="upload-client"),
    path("setups/", views.setup_list, name="setups"),
    path("setups/new/", views.setup_create, name="setup-new"),
    path("setups/<uuid:setup_id>/", views.setup_detail, name="setup"),
    path("setups/<uuid:setup_id>/edit/", views.setup_edit, name="setup-edit"),
    path("setups/<uuid:setup_id>/delete/", views.setup_delete, name="setup-delete"),
    path("setups/<uuid:setup_id>/layout/", views.setup_layout, name="setup-layout"),
    path(
        "setups/<uuid:setup_id>/images/<uuid:image_id>/remove/",
        views.setup_image_remove,
        name="setup-image-remove",
    ),
]
