"""Factories for images, versions and setups. Versions get real (small) files on disk."""

from __future__ import annotations

import hashlib

import factory

from catalogue.models import Image, ImageFrozen, ImageSetup, ImageType, Version
from catalogue.storage import get_storage
from tests.accounts.factories import UserFactory


class ImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Image

    name = factory.Sequence(lambda n: f"image-{n}")
    owner = factory.SubFactory(UserFactory)
    type = ImageType.SINGLE
    target_disk = "/dev/sda"


def write_version(image: Image, number: int, content: bytes, uploaded_by=None) -> Version:
    """Store ``content`` as raw version ``number`` of ``image``, file and row."""
    with get_storage().open_write(image.uuid) as pending:
        pending.write(content)
        stored = pending.commit(number)
    return Version.objects.create(
        image=image,
        number=number,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        stored_size=stored.allocated,
        uploaded_by=uploaded_by or image.owner,
    )


class VersionFactory(factory.django.DjangoModelFactory):
    """A version whose file holds ``content`` (default: 64 KiB of a repeated pattern)."""

    class Meta:
        model = Version

    image = factory.SubFactory(ImageFactory)
    number = factory.Sequence(lambda n: n)

    @classmethod
    def _create(cls, model_class, image, number, content=None, **kwargs):
        content = content if content is not None else b"BAAS" * 16384
        return write_version(image, number, content, kwargs.get("uploaded_by"))


class ImageSetupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ImageSetup

    name = factory.Sequence(lambda n: f"setup-{n}")
    owner = factory.SubFactory(UserFactory)


class ImageFrozenFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ImageFrozen

    setup = factory.SubFactory(ImageSetupFactory)
    version = factory.SubFactory(VersionFactory)
    image = factory.LazyAttribute(lambda o: o.version.image)
    sync = False
