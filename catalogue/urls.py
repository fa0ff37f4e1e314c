"""Catalogue routes, mounted under ``/api/`` (paths from the original BAAS)."""

from __future__ import annotations

from django.urls import path

from catalogue.apis import downloads, setups, usage
from catalogue.apis.images import urlpatterns as image_urlpatterns

setup_urlpatterns = [
    path("user/<str:username>/image_setup", setups.SetupCreateApi.as_view(), name="setup-create"),
    path("user/<str:username>/image_setups", setups.SetupListApi.as_view(), name="setup-list"),
    path(
        "user/<str:username>/image_setup/<uuid:setup_uuid>",
        setups.SetupDetailApi.as_view(),
        name="setup-detail",
    ),
    path(
        "user/<str:username>/image_setup/<uuid:setup_uuid>/images",
        setups.SetupImagesApi.as_view(),
        name="setup-images",
    ),
]

# The image segment takes any text: the views answer 400 for a malformed UUID.
download_urlpatterns = [
    path(
        "image/<str:image_uuid>/latest",
        downloads.LatestVersionDownloadApi.as_view(),
        name="image-download-latest",
    ),
    path(
        "image/<str:image_uuid>/<int:number>",
        downloads.VersionDownloadApi.as_view(),
        name="image-download",
    ),
    path(
        "image/<str:image_uuid>/<int:number>/map",
        downloads.VersionMapApi.as_view(),
        name="image-version-map",
    ),
    path(
        "image/<str:image_uuid>/<int:number>/data",
        downloads.VersionDataApi.as_view(),
        name="image-version-data",
    ),
]

urlpatterns = [
    path("user/<str:username>/usage", usage.UserUsageApi.as_view(), name="user-usage"),
    *image_urlpatterns,
    *setup_urlpatterns,
    *download_urlpatterns,
]
