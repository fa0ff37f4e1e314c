from __future__ import annotations

from django.apps import AppConfig


class FlashingConfig(AppConfig):
    name = "flashing"
