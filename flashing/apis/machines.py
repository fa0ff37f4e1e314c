"""Machines: everyone signed in reads them; administrators register, change and remove them.

A machine is addressed by any of its MAC addresses, in any common form
(``aa:bb:cc:dd:ee:ff``, ``AA-BB-…``, ``aabb.ccdd.eeff``, ``aabbccddeeff``).
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsAdministrator
from baas_site.created import LOCATION, location
from baas_site.filters import FILTER_BACKENDS
from flashing import selectors
from flashing.apis.serializers import MachineInputSerializer, MachineOutputSerializer
from flashing.filters import MachineFilter
from flashing.models import Machine
from flashing.permissions import CanManageMachines
from flashing.services import machines as services


def _machine_response(request: Request, mac: str, code: int = status.HTTP_200_OK) -> Response:
    machine = selectors.machine_get(mac=mac)
    return Response(MachineOutputSerializer(machine, context={"request": request}).data, code)


class MachineListApi(generics.ListAPIView):
    permission_classes = [CanManageMachines]
    serializer_class = MachineOutputSerializer
    queryset = Machine.objects.none()  # the model, for the schema; ``get_queryset`` reads
    filter_backends = FILTER_BACKENDS
    filterset_class = MachineFilter
    ordering_fields = ["name", "state", "architecture"]

    def get_queryset(self) -> QuerySet[Machine]:
        return selectors.machine_list()


class MachineCreateApi(APIView):
    permission_classes = [IsAdministrator]

    @extend_schema(
        request=MachineInputSerializer,
        responses={201: MachineOutputSerializer},
        parameters=[LOCATION],
    )
    def post(self, request: Request) -> Response:
        data = MachineInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        state = values.pop("state", None)
        machine = services.machine_create(actor=request.user, **values)
        if state is not None:
            services.machine_update(actor=request.user, machine=machine, state=state)
        response = _machine_response(request, values["mac_addresses"][0], status.HTTP_201_CREATED)
        response["Location"] = location("machine-detail", mac=values["mac_addresses"][0])
        return response


class MachineDetailApi(APIView):
    permission_classes = [CanManageMachines]

    @extend_schema(responses=MachineOutputSerializer)
    def get(self, request: Request, mac: str) -> Response:
        return _machine_response(request, mac)

    @extend_schema(request=MachineInputSerializer, responses=MachineOutputSerializer)
    def put(self, request: Request, mac: str) -> Response:
        return self._update(request, mac, partial=False)

    @extend_schema(request=MachineInputSerializer(partial=True), responses=MachineOutputSerializer)
    def patch(self, request: Request, mac: str) -> Response:
        return self._update(request, mac, partial=True)

    def _update(self, request: Request, mac: str, *, partial: bool) -> Response:
        machine = selectors.machine_get(mac=mac)
        data = MachineInputSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        services.machine_update(actor=request.user, machine=machine, **data.validated_data)
        macs = data.validated_data.get("mac_addresses")
        return _machine_response(request, macs[0] if macs else mac)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, mac: str) -> Response:
        services.machine_delete(actor=request.user, machine=selectors.machine_get(mac=mac))
        return Response(status=status.HTTP_204_NO_CONTENT)
