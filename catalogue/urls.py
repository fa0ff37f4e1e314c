"""Catalogue routes, mounted under ``/api/`` (paths from the original BAAS)."""

from __future__ import annotations

from django.urls import path

from catalogue.apis import downloads, hashes, images, resumable, setups, usage

# The image segment takes any text: the views answer 400 for a malformed UUID.
# ``image/<id>/versions`` comes before the downloads' ``image/<id>/<int>``.
# ``image/<id>`` takes the uploads too: POST, or PUT with a binary body
# (``catalogue.apis.uploads``); its GET, PUT with JSON, PATCH and DELETE are the image's.
image_urlpatterns = [
    path("user/<str:username>/image", images.ImageCreateApi.as_view(), name="user-image-create"),
    path("user/<str:username>/images", images.UserImageListApi.as_view(), name="user-images"),
    path(
        "user/<str:username>/images/<str:image_name>",
        images.UserImagesByNameApi.as_view(),
        name="user-images-by-name",
    ),
    path("images", images.ImageListApi.as_view(), name="image-list"),
    path("image/<str:image_id>", images.ImageDetailApi.as_view(), name="image-detail"),
    path("image/<str:image_id>/versions", images.VersionListApi.as_view(), name="image-versions"),
    path("image/<str:image_id>/extend", images.ImageExtendApi.as_view(), name="image-extend"),
]

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
    path(
        "image/<str:image_uuid>/<int:number>/hashes",
        hashes.VersionHashesApi.as_view(),
        name="image-version-hashes",
    ),
]

urlpatterns = [
    path("user/<str:username>/usage", usage.UserUsageApi.as_view(), name="user-usage"),
    *image_urlpatterns,
    *setup_urlpatterns,
    *download_urlpatterns,
    # Resumable uploads (draft-ietf-httpbis-resumable-upload), created by an upload to image/<id>.
    path("uploads", resumable.UploadListApi.as_view(), name="upload-list"),
    path("uploads/<str:token>", resumable.UploadDetailApi.as_view(), name="upload-detail"),
]
