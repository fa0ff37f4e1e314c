"""A container image as an image's next version: resolve, reuse, pull, check, unpack, build,
store (through ``catalogue.interface``, the upload path), with its provenance."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction

from catalogue.interface import image_room, version_store_file
from catalogue.models import Version
from imports.exceptions import ImportStopped, ImportTooLarge
from imports.models import ImportJob, Layout, State
from imports.services import disk, oci, secrets, unpack

if TYPE_CHECKING:
    from imports.services.progress import Progress


def oci_import(
    *, job: ImportJob, progress: Progress, folder: Path, credentials: dict[str, str] | None
) -> Version:
    reference = oci.parse_reference(job.source)
    platform = oci.parse_platform(job.platform)
    limit, why = image_room(job.image)
    if job.size is not None and job.size > limit:
        raise ImportTooLarge(
            f"A filesystem of {job.size} bytes is more than {limit} bytes ({why}); "
            "nothing was pulled or stored."
        )
    progress.limit_why = why
    ctx = oci.Context(
        work=folder,
        log=progress.log,
        progress=progress.progress,
        watch=progress.watch,
        limit=limit,
        limit_why=why,
        deadline=progress.deadline,
        auth_file=_auth_file(folder, reference, credentials),
        archive=folder / "archive.tar" if reference.transport in oci.ARCHIVES else None,
        discard=progress.remover.later,
    )
    try:
        return _import(job, progress, ctx, reference, platform)
    finally:
        if credentials is not None and ctx.auth_file is not None:
            ctx.auth_file.unlink(missing_ok=True)


def _import(
    job: ImportJob,
    progress: Progress,
    ctx: oci.Context,
    reference: oci.Reference,
    platform: oci.Platform,
) -> Version:
    progress.log(f"Resolving {reference.text} for {platform}.")
    resolved = oci.resolve(reference, platform, ctx)
    progress.progress(layers_total=resolved.layers)
    ImportJob.objects.filter(pk=job.pk).update(manifest_digest=resolved.digest)
    job.manifest_digest = resolved.digest
    progress.log(f"Manifest {resolved.digest}.")
    existing = _already_imported(job)
    if existing is not None:
        progress.log(f"Already imported as version {existing.number}: nothing new to store.")
        return existing
    layout = oci.pull(reference, resolved, platform, ctx)
    progress.log("Checking the layers while they are unpacked (used once all passed).")
    tree, rootfs = unpack.check_and_unpack(layout, ctx)
    progress.log(f"Every layer passed the checks; unpacked ({tree.unpacked} bytes at most).")
    ctx.discard(layout)  # the layers are no longer needed: removed while mke2fs runs
    size = job.size or oci.fitted_size(rootfs)
    if size > ctx.limit:
        raise ImportTooLarge(
            f"The filesystem needs {size} bytes, more than {ctx.limit} ({ctx.limit_why}). "
            "Nothing was stored."
        )
    built = ctx.work / "image.raw"
    if job.layout == Layout.DISK:
        progress.log("Making the disk: partition table, boot partition, bootloader, root.")
        disk.make_disk(rootfs, tree, path=built, root_size=size, label=job.label, ctx=ctx)
    else:
        progress.log(f"Making an ext4 filesystem of {size} bytes labelled {job.label}.")
        oci.make_filesystem(rootfs, tree, path=built, size=size, label=job.label, ctx=ctx)
    ctx.discard(rootfs)  # removed while the store reads the filesystem
    progress.log("Storing it as the image's next version.")
    return _store(job, built, reference, platform, resolved.digest, _stopper(progress))


def _already_imported(job: ImportJob) -> Version | None:
    """The version an earlier import of this very manifest made the same way, if it is kept."""
    earlier = (
        ImportJob.objects.filter(
            image=job.image,
            state=State.DONE,
            manifest_digest=job.manifest_digest,
            platform=job.platform,
            layout=job.layout,
            label=job.label,
            size=job.size,
            version__isnull=False,
        )
        .exclude(pk=job.pk)
        .select_related("version")
        .first()
    )
    return earlier.version if earlier is not None else None


def _stopper(progress: Progress) -> Callable[[], None]:
    """What the store calls as it reads the file: raises ImportStopped once the job is
    cancelled (or out of time), asking the row at once, then each second. A cancel that
    comes after the whole file was read is too late: the version is kept."""
    asked = False

    def stop() -> None:
        nonlocal asked
        reason = progress.stop_reason(fresh=not asked)
        asked = True
        if reason is not None:
            raise ImportStopped(reason)

    return stop


def _store(
    job: ImportJob,
    path: Path,
    reference: oci.Reference,
    platform: oci.Platform,
    digest: str,
    stop: Callable[[], None],
) -> Version:
    actor = job.created_by
    note = f"Imported from {reference.text} ({digest})"[:500]
    with transaction.atomic():
        version = version_store_file(
            actor=actor, image=job.image, path=path, note=note, move=True, stop=stop
        )
        Version.objects.filter(pk=version.pk).update(
            source_reference=reference.text,
            source_digest=digest,
            source_platform=str(platform),
        )
    version.refresh_from_db()
    return version


def _auth_file(
    folder: Path, reference: oci.Reference, credentials: dict[str, str] | None
) -> Path | None:
    """The request's credentials as a 0600 auth file (removed after), else the administrator's."""
    if credentials is None:
        configured = settings.BAAS_REGISTRY_AUTH_FILE
        return Path(configured) if configured else None
    path = folder / "auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.auth_file_for(reference.registry, credentials))
    return path
