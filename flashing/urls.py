"""Machine, lease and deployment routes, mounted under ``/api/`` (paths from the original BAAS)."""

from __future__ import annotations

from django.urls import path

from flashing.apis import deployments, leases, machines

urlpatterns = [
    path("machines", machines.MachineListApi.as_view(), name="machine-list"),
    path("machine", machines.MachineCreateApi.as_view(), name="machine-create"),
    path("machine/<str:mac>", machines.MachineDetailApi.as_view(), name="machine-detail"),
    path("machine/<str:mac>/lease", leases.MachineLeaseApi.as_view(), name="machine-lease"),
    path("machine/<str:mac>/boot", deployments.MachineBootApi.as_view(), name="machine-boot"),
    path("deployments", deployments.DeploymentListApi.as_view(), name="deployment-list"),
    path(
        "deployment/<int:deployment_id>",
        deployments.DeploymentDetailApi.as_view(),
        name="deployment-detail",
    ),
    path(
        "deployment/<int:deployment_id>/cancel",
        deployments.DeploymentCancelApi.as_view(),
        name="deployment-cancel",
    ),
]
