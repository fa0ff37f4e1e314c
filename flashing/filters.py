"""The machine and deployment lists' filters.

They narrow what ``flashing.selectors`` already limited to what the caller may
see; a state or architecture outside its choices answers 400
(``baas_site.filters``).
"""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet

from flashing import selectors
from flashing.models import Architecture, Deployment, DeploymentState, Machine, MachineState


class MachineFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=MachineState.choices)
    architecture = django_filters.ChoiceFilter(choices=Architecture.choices)

    class Meta:
        model = Machine
        fields = ["state", "architecture"]


class DeploymentFilter(django_filters.FilterSet):
    machine = django_filters.CharFilter(
        method="filter_machine", help_text="A MAC address of the machine"
    )
    state = django_filters.ChoiceFilter(choices=DeploymentState.choices)

    class Meta:
        model = Deployment
        fields = ["machine", "state"]

    def filter_machine(
        self, queryset: QuerySet[Deployment], name: str, value: str
    ) -> QuerySet[Deployment]:
        """Any form of MAC address: 400 if malformed, 404 for no such machine (as today)."""
        return queryset.filter(machine=selectors.machine_get(mac=value))
