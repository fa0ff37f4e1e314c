from __future__ import annotations

from django.apps import AppConfig


class CatalogueConfig(AppConfig):
    name = "catalogue"

    def ready(self) -> None:
        # What a user owns here, for deleting users (accounts.ownership).
        from catalogue.services import ownership

        ownership.register()
