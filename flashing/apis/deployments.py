"""Deployments: queue a setup on a machine, watch the queue, cancel."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from baas_site.created import LOCATION, location
from baas_site.filters import FILTER_BACKENDS
from catalogue.interface import setup_get_usable
from flashing import selectors
from flashing.apis.serializers import (
    DeploymentDetailSerializer,
    DeploymentInputSerializer,
    DeploymentOutputSerializer,
)
from flashing.filters import DeploymentFilter
from flashing.models import Deployment
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

    @extend_schema(
        request=DeploymentInputSerializer,
        responses={201: DeploymentDetailSerializer},
        parameters=[LOCATION],
    )
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
        response = _detail(request, deployment.pk, status.HTTP_201_CREATED)
        response["Location"] = location("deployment-detail", deployment_id=deployment.pk)
        return response


class DeploymentListApi(generics.ListAPIView):
    serializer_class = DeploymentOutputSerializer
    queryset = Deployment.objects.none()  # the model, for the schema; ``get_queryset`` reads
    filter_backends = FILTER_BACKENDS
    filterset_class = DeploymentFilter
    ordering_fields = ["created_at", "state"]

    def get_queryset(self) -> QuerySet[Deployment]:
        return selectors.deployment_list(user=self.request.user)

    @extend_schema(description="Your deployments, newest first; administrators see everyone's.")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


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
