"""Deployments: queue a setup on a machine, watch the queue, cancel."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalogue.interface import setup_get_usable
from flashing import selectors
from flashing.apis.serializers import (
    DeploymentDetailSerializer,
    DeploymentInputSerializer,
    DeploymentOutputSerializer,
)
from flashing.models import DeploymentState
from flashing.services import deployments as services


def _detail(request: Request, deployment_id: int, code: int = status.HTTP_200_OK) -> Response:
    deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
    return Response(DeploymentDetailSerializer(deployment).data, status=code)


class MachineBootApi(APIView):
    @extend_schema(
        responses={
            200: DeploymentOutputSerializer,
            204: OpenApiResponse(description="Nothing is queued."),
        },
        description="The machine's next queued deployment (first in, first out): "
        "for the lease holder and administrators.",
    )
    def get(self, request: Request, mac: str) -> Response:
        machine = selectors.machine_get(mac=mac)
        deployment = selectors.deployment_next_seen_by(actor=request.user, machine=machine)
        if deployment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(DeploymentOutputSerializer(deployment).data)

    @extend_schema(request=DeploymentInputSerializer, responses={201: DeploymentDetailSerializer})
    def post(self, request: Request, mac: str) -> Response:
        machine = selectors.machine_get(mac=mac)
        data = DeploymentInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        setup = setup_get_usable(user=request.user, setup_uuid=data.validated_data["setup"])
        if setup is None:
            raise ValidationError({"setup": ["No such setup, or not yours to flash."]})
        deployment = services.deployment_enqueue(
            actor=request.user, machine=machine, setup=setup, sync=data.validated_data["sync"]
        )
        return _detail(request, deployment.pk, status.HTTP_201_CREATED)


class DeploymentListApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("machine", str, description="A MAC address of the machine"),
            OpenApiParameter("state", str, enum=DeploymentState.values),
        ],
        responses=DeploymentOutputSerializer(many=True),
        description="Your deployments, newest first; administrators see everyone's.",
    )
    def get(self, request: Request) -> Response:
        mac = request.query_params.get("machine")
        deployments = selectors.deployment_list(
            user=request.user,
            machine=selectors.machine_get(mac=mac) if mac else None,
            state=request.query_params.get("state"),
        )
        return Response(DeploymentOutputSerializer(deployments, many=True).data)


class DeploymentDetailApi(APIView):
    @extend_schema(responses=DeploymentDetailSerializer)
    def get(self, request: Request, deployment_id: int) -> Response:
        return _detail(request, deployment_id)


class DeploymentCancelApi(APIView):
    @extend_schema(request=None, responses=DeploymentDetailSerializer)
    def post(self, request: Request, deployment_id: int) -> Response:
        deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
        services.deployment_cancel(actor=request.user, deployment=deployment)
        return _detail(request, deployment_id)
