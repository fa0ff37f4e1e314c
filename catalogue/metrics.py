"""What the catalogue tells ``/metrics``: images, versions and the bytes they hold.

Read from the database when the endpoint is scraped, so every web worker answers
the same figures and nothing in the upload path counts anything. The endpoint
itself (who may scrape it, the format) is ``baas_site.metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Q, Sum
from prometheus_client.core import GaugeMetricFamily

from catalogue.models import Image, ImageType, Version
from catalogue.storage import get_storage


def _gauge(name: str, help_text: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def gauges() -> Iterator[GaugeMetricFamily]:
    by_type = dict(Image.objects.values_list("type").annotate(n=Count("pk")).order_by())
    yield _gauge(
        "baas_images",
        "Images in the catalogue, by type.",
        "type",
        {t: by_type.get(t, 0) for t in ImageType.values},
    )
    counts = Version.objects.aggregate(
        ready=Count("pk", filter=Q(damaged="", job_sent_at__isnull=True)),
        processing=Count("pk", filter=Q(damaged="", job_sent_at__isnull=False)),
        damaged=Count("pk", filter=~Q(damaged="")),
        logical=Sum("size"),
        stored=Sum("stored_size"),
    )
    yield _gauge(
        "baas_versions",
        "Image versions: ready, still owing a processing job, or damaged.",
        "state",
        {s: counts[s] for s in ("ready", "processing", "damaged")},
    )
    yield _gauge(
        "baas_version_bytes",
        "Bytes of all versions: their disks' logical size, and what their files hold.",
        "kind",
        {"logical": counts["logical"] or 0, "stored": counts["stored"] or 0},
    )
    total, free = get_storage().capacity()
    yield _gauge(
        "baas_image_root_bytes",
        "The image root's file system: its size and what is free.",
        "kind",
        {"total": total, "free": free},
    )
