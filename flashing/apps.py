from __future__ import annotations

from django.apps import AppConfig


class FlashingConfig(AppConfig):
    name = "flashing"

    def ready(self) -> None:
        # What a user owns here, for deleting users (accounts.ownership).
        from flashing.services import holdings, ownership

        ownership.register()
        # What deployments, disks and mounts hold of images and setups (catalogue.holders).
        holdings.register()
