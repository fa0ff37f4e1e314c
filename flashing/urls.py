"""Machine, lease and deployment routes, mounted under ``/api/`` (paths from the original BAAS)."""

from __future__ import annotations

from django.urls import path, re_path

from flashing.apis import agent, boot, deployments, leases, machines

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
    path(
        "deployment/<int:deployment_id>/boot-again",
        boot.DeploymentBootAgainApi.as_view(),
        name="deployment-boot-again",
    ),
    path("boot/mgmt/<str:name>", boot.ManagementOsFileApi.as_view(), name="boot-mgmt-file"),
    path(
        "boot/image/<int:deployment_id>/<str:secret>/<str:name>",
        boot.BootImageFileApi.as_view(),
        name="boot-image-file",
    ),
    re_path(r"^boot/(?P<mac>[^/]+)\.ipxe$", boot.BootScriptApi.as_view(), name="boot-script"),
    path("agent/checkin", agent.AgentCheckinApi.as_view(), name="agent-checkin"),
    path("agent/instructions", agent.AgentInstructionsApi.as_view(), name="agent-instructions"),
    path("agent/progress", agent.AgentProgressApi.as_view(), name="agent-progress"),
    path("agent/result", agent.AgentResultApi.as_view(), name="agent-result"),
    path("log", agent.AgentLogApi.as_view(), name="agent-log"),
]
