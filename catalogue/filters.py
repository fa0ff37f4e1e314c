"""The image lists' filters (``?type=``, ``?name=``, ``?search=``, ``?owner=``).

They narrow what ``catalogue.selectors.images`` already limited to the images
the caller may read; a type outside ``ImageType`` answers 400
(``baas_site.filters``).
"""

from __future__ import annotations

import django_filters

from catalogue.models import Image, ImageType


class ImageTypeFilter(django_filters.FilterSet):
    """A user's images of one name: by type."""

    type = django_filters.ChoiceFilter(
        choices=ImageType.choices, help_text="Only images of this type"
    )

    class Meta:
        model = Image
        fields = ["type"]


class OwnedImageFilter(ImageTypeFilter):
    """One user's images: by type and exact name."""

    name = django_filters.CharFilter(help_text="Only images with exactly this name")

    class Meta:
        model = Image
        fields = ["type", "name"]


class ImageFilter(OwnedImageFilter):
    """Every readable image: also by part of the name and by owner."""

    search = django_filters.CharFilter(
        field_name="name", lookup_expr="icontains", help_text="Only images whose name contains this"
    )
    owner = django_filters.CharFilter(
        field_name="owner__username", help_text="Only images owned by this username"
    )

    class Meta:
        model = Image
        fields = ["type", "name", "search", "owner"]
