from __future__ import annotations

from django.apps import AppConfig


class FlashingConfig(AppConfig):
    name = "flashing"

    def ready(self) -> None:
        # What a user owns here, for deleting users (accounts.ownership).
        from flashing.services import common, holdings, ownership, pipeline

        ownership.register()
        # What deployments, disks and mounts hold of images and setups (catalogue.holders).
        holdings.register()
        # The pipeline's task, for the modules below it that kick a machine (common).
        common.machine_advance_task_set(pipeline.machine_advance_task)
