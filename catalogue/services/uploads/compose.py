"""A delta upload: the next version composed from a base version's data and a disk's changes.

An agent bringing a disk back (or any client that knows what a disk held)
sends only what changed since the disk held version ``b`` of the image: an
Android sparse image of the whole disk whose ``DONT_CARE`` chunks mean "as in
version b" (``diskimage.sparsedelta``), with ``Upload-Base-Version: b``. The
composed image — version b's bytes where the delta says so, the delta's
elsewhere — goes through the upload path like any other upload
(:class:`~catalogue.services.uploads.VersionReceiver`, then
:func:`~catalogue.services.uploads.version_upload`): mapped as it streams,
written sparse to a pending file, its SHA-256 computed now or by the digest
job, committed atomically as the next number, processed by the version
pipeline, and nothing stored if anything fails.

The base's unchanged data is copied (sparse) into the new version: versions
do not share blocks here. It is read through
:class:`~catalogue.services.versionbytes.VersionBytes`, whatever the base's
storage (raw, zstd in frames, or any compressed form, decoded forward). With
``Upload-Map-Digest`` the base's ranges are not hashed as they are read (the
composed image's map, checked against the digest, covers them: a damaged base
composes another map); when that check fails the base is read again, checked,
and marked damaged if its stored file disagrees with its map.

The new version is always the image's next number, even when ``b`` is no
longer its latest: it is b plus the changes, and says so (``based_on``);
versions that came after b are neither lost nor merged into it. With
``Upload-Map-Digest`` the sender names the data map the result must have
(``diskimage.sparsedelta.map_digest``): a composed image with another map is
refused, so a delta built against the wrong bytes never becomes a version.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.conf import settings

from accounts.services import audit_record
from catalogue.exceptions import BadUpload, VersionNotFound
from catalogue.models import Compression, FileStandard, Image, Version
from catalogue.services.codecs import version_damaged
from catalogue.services.datamaps import version_map
from catalogue.services.delivery import version_for_download
from catalogue.services.uploads.commit import version_upload
from catalogue.services.uploads.receiver import ReceivedUpload, VersionReceiver
from catalogue.services.versionbytes import StoredMismatch, VersionBytes, version_bytes_check
from diskimage.datamap import DataMap
from diskimage.sparsedelta import DeltaComposer, DeltaError, map_digest

logger = logging.getLogger(__name__)
BASE_HEADER = "Upload-Base-Version"
MAP_HEADER = "Upload-Map-Digest"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def delta_base_number(value: str | None) -> int | None:
    """The base version a request names (``Upload-Base-Version``), None for a whole upload."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise BadUpload(f"{BASE_HEADER} is a version number, not {value.strip()[:40]!r}.")
    return int(value.strip())


def map_digest_expected(value: str | None) -> str | None:
    """The ``Upload-Map-Digest`` (64 hex digits), or None."""
    if value is None:
        return None
    digest = value.strip().lower()
    if not SHA256_HEX.fullmatch(digest):
        raise BadUpload(f"{MAP_HEADER} is a SHA-256 in 64 hexadecimal digits.")
    return digest


def delta_base_get(*, actor: Any, image: Image, number: int) -> tuple[Version, DataMap]:
    """Version ``number`` of ``image`` as the base of a delta, with its data map.

    404 (``VersionNotFound``) if there is no such version or ``actor`` may not
    read it; 400 if it cannot be a base: damaged, a qcow2 image, no map yet.
    """
    try:
        base = version_for_download(user=actor, image_uuid=image.pk, version=str(number))
    except VersionNotFound:
        raise VersionNotFound(
            f"Version {number} of this image does not exist (any more): there is nothing to "
            "apply the changes to. Upload the whole image instead."
        ) from None
    if image.file_standard != FileStandard.RAW:
        raise BadUpload("Delta uploads are for raw images; upload a qcow2 image whole.")
    if base.damaged:
        raise BadUpload(
            f"Version {number} is damaged ({base.damaged}): it cannot be the base of a "
            "delta. Upload the whole image instead."
        )
    datamap = version_map(base)
    if datamap is None or datamap.blake3 is None:
        raise BadUpload(
            f"Version {number} has no data map yet, so changes cannot be applied to it; "
            "upload the whole image, or try again in a minute."
        )
    return base, datamap


def version_compose(
    *,
    actor: Any,
    image: Image,
    base: Version,
    base_map: DataMap,
    delta: Iterable[bytes],
    expected_map: str | None = None,
) -> Version:
    """Store ``base`` + ``delta`` (the bytes as sent) as ``image``'s next version.

    The caller got ``base`` and ``base_map`` from :func:`delta_base_get` and has
    checked that ``actor`` may write ``image``. Raises BadUpload (ill-formed
    delta, another size than the base's, a map other than ``expected_map``)
    and whatever an upload raises; nothing is stored then.
    """
    receiver = VersionReceiver(
        image=image,
        max_size=settings.BAAS_MAX_IMAGE_SIZE,
        wire_digest=False,
        raw_at_least=base.size,  # the whole image's SHA-256 as for any upload of its size
    )
    started = time.monotonic()
    # With the map the result must have, the base's ranges are not hashed as they are read:
    # a damaged base composes another map, which is refused (and the base then checked).
    checked = expected_map is None
    with VersionBytes(base, base_map, check=checked) as source, receiver:
        receiver.declare_encoding(Compression.NONE)
        composer = DeltaComposer(
            size=base.size,
            ranges=[(start, end) for start, end, _ in base_map.ranges],
            read=source.read,
            out=receiver.write,  # zeros come as read-only views: the receiver takes them
        )
        try:
            for data in delta:
                composer.write(data)
            composer.finish()
        except DeltaError as exc:
            raise BadUpload(f"{exc} Nothing was stored.") from exc
        except StoredMismatch as exc:  # the base's file went bad: recorded, never passed on
            raise _base_damaged(base, exc) from exc
        composed = time.monotonic()
        try:
            version = version_upload(
                actor=actor,
                image=image,
                receiver=receiver,
                based_on=base,
                check=partial(_check_map, expected_map),
            )
        except BadUpload:
            if not checked:  # was it the base's stored bytes?
                _base_check(base, base_map)
            raise
    logger.info(
        "Version %s of image %s composed from v%s and a %d-byte delta in %.2f s, "
        "committed in %.2f s",
        version.number,
        image.pk,
        base.number,
        composer.received,
        composed - started,
        time.monotonic() - composed,
    )
    audit_record(
        actor=actor,
        action="version.delta",
        target=version,
        image=str(image.uuid),
        number=version.number,
        based_on=base.number,
        latest_was=_latest_before(image, version),
        delta_bytes=composer.received,
        carried_bytes=composer.carried,
    )
    return version


def _base_damaged(base: Version, exc: StoredMismatch) -> BadUpload:
    """Record that ``base``'s stored file went bad; the refusal to raise."""
    version_damaged(base, f"Version {base.number} is damaged: {exc}.")
    return BadUpload(
        f"Version {base.number} cannot be the base of a delta: {exc} (it is now marked "
        "damaged). Nothing was stored; upload the whole image."
    )


def _base_check(base: Version, base_map: DataMap) -> None:
    """Raise the refusal of a damaged base if its stored file disagrees with its map."""
    try:
        version_bytes_check(base, base_map)
    except StoredMismatch as exc:
        raise _base_damaged(base, exc) from exc


def _check_map(expected: str | None, received: ReceivedUpload) -> None:
    if expected is None or received.datamap is None:
        return
    if map_digest(received.datamap) != expected:
        raise BadUpload(
            f"The composed image's data map does not have the digest in {MAP_HEADER}: the "
            "changes were not made against the bytes of the base version (or were damaged "
            "on the way). Nothing was stored; upload the whole image."
        )


def _latest_before(image: Image, version: Version) -> int | None:
    """The latest version before this one (for the record: was the base still the latest?)."""
    previous = (
        Version.objects.filter(image=image, number__lt=version.number).order_by("-number").first()
    )
    return previous.number if previous is not None else None
