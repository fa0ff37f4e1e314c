"""Dashboard pages for machines and deployments, mounted at the site root."""

from __future__ import annotations

from django.urls import path

from flashing import views

app_name = "machines"

urlpatterns = [
    path("machines/", views.machine_list, name="list"),
    path("machines/<str:mac>/", views.machine_detail, name="detail"),
    path("machines/<str:mac>/lease", views.machine_lease, name="lease"),
    path("machines/<str:mac>/release", views.machine_release, name="release"),
    path("machines/<str:mac>/deploy", views.machine_deploy, name="deploy"),
    path("deployments/<int:deployment_id>/", views.deployment_detail, name="deployment"),
    path(
        "deployments/<int:deployment_id>/boot-again",
        views.deployment_boot,
        name="deployment-boot-again",
    ),
    path(
        "deployments/<int:deployment_id>/cancel",
        views.deployment_cancel,
        name="deployment-cancel",
    ),
]
