"""Factories for machines, leases and deployments."""

from __future__ import annotations

from datetime import timedelta

import factory
from django.utils import timezone

from flashing.models import Deployment, Lease, MacAddress, Machine, MachineDisk
from tests.accounts.factories import UserFactory


def mac_for(n: int) -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in n.to_bytes(3, "big"))


class MachineFactory(factory.django.DjangoModelFactory):
    """A managed machine with one MAC address (``machine.mac``)."""

    class Meta:
        model = Machine
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"node{n}")
    architecture = "x86_64"
    managed = True
    power_driver = "manual"

    @factory.post_generation
    def mac(obj, create, extracted, **kwargs):
        if create:
            address = extracted or mac_for(obj.pk)
            MacAddress.objects.create(machine=obj, address=address)
            obj.mac = address


class MachineDiskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MachineDisk

    machine = factory.SubFactory(MachineFactory)
    path = "/dev/sda"
    size = 64 * 1024**3


class LeaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Lease

    machine = factory.SubFactory(MachineFactory)
    user = factory.SubFactory(UserFactory)
    starts_at = factory.LazyFunction(timezone.now)
    ends_at = factory.LazyAttribute(lambda o: o.starts_at + timedelta(hours=8))


class DeploymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Deployment

    machine = factory.SubFactory(MachineFactory)
    requested_by = factory.SubFactory(UserFactory)
