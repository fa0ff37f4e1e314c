"""Leases: a user's turn on a machine. Lease, extend (the same call), release."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from baas_site.created import LOCATION
from baas_site.created import created as created_response
from flashing import selectors
from flashing.apis.serializers import LeaseInputSerializer, LeaseOutputSerializer
from flashing.services import leases as services


class MachineLeaseApi(APIView):
    @extend_schema(
        request=LeaseInputSerializer,
        responses={201: LeaseOutputSerializer, 200: LeaseOutputSerializer},
        description="Lease an available machine (201), or extend the lease you hold (200). "
        "A lease has no URL of its own: Location is the machine's, which shows its lease.",
        parameters=[LOCATION],
    )
    def post(self, request: Request, mac: str) -> Response:
        machine = selectors.machine_get(mac=mac)
        data = LeaseInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        lease, created = services.lease_acquire(
            user=request.user, machine=machine, hours=data.validated_data["hours"]
        )
        if not created:
            return Response(LeaseOutputSerializer(lease).data)
        return created_response(LeaseOutputSerializer(lease).data, "machine-detail", mac=mac)

    @extend_schema(
        responses={204: None},
        description="Release the lease: its queued deployments are cancelled, the machine "
        "is reset to its default setup (sync images brought back first) and freed.",
    )
    def delete(self, request: Request, mac: str) -> Response:
        machine = selectors.machine_get(mac=mac)
        lease = selectors.lease_active(machine=machine)
        if lease is None:
            raise NotFound(f"{machine.name} is not leased.")
        services.lease_end(actor=request.user, lease=lease)
        return Response(status=status.HTTP_204_NO_CONTENT)
