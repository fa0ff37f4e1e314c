"""Writes for images: create (with its empty version 0), update, delete.

Every decision about who may do what is a predicate of ``catalogue.rules``, checked here.
Files are written before the rows that describe them, and removed only after
the rows are gone for good (``transaction.on_commit``).
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import ProtectedError

from accounts.models import User
from accounts.rules import Actor, can_manage_user
from accounts.services import audit_record
from catalogue import holders, rules
from catalogue.exceptions import ImageConflict, InvalidInput, NotYours
from catalogue.models import (
    Compression,
    FileStandard,
    Image,
    ImageType,
    Mount,
    TransferProtocol,
    Version,
)
from catalogue.selectors.setups import describe_setups, setups_pinning
from catalogue.services import lifecycle
from catalogue.services.bootfiles import boot_cache_forget
from catalogue.services.datamaps import version_map_store
from catalogue.services.pipeline import image_process, version_received
from catalogue.storage import StoredFile, get_storage
from diskimage import ZERO_CHUNK
from diskimage.datamap import empty_map
from diskimage.seekable import zeros_in_frames

EMPTY_NOTE = "Empty image, created with the image."
QEMU_IMG = "qemu-img"
# SHA-256 of N zero bytes, for sizes where computing it would be slow (6 GiB: ~4 s).
# Checked by tests/catalogue/test_images_api.py against a real computation.
KNOWN_ZEROS_SHA256 = {
    6 * 1024**3: "5c32c2b28999325bc5ad39d6530bcb46fbdf1f86375a991b7269764c50b0d109",
}
_zeros_sha256_memo: dict[int, str] = dict(KNOWN_ZEROS_SHA256)
_zeros_sha256_lock = threading.Lock()

# Fields image_update changes by plain assignment.
SIMPLE_FIELDS = (
    "name",
    "description",
    "compression",
    "target_disk",
    "transfer_protocol",
    "keep_versions",
)


# --- The empty image's checksum ---------------------------------------------------


def zeros_sha256(size: int) -> str:
    """The SHA-256 of ``size`` zero bytes; computed at most once per size and process.

    The default new-image size is precomputed; other sizes are looked up among
    the empty versions 0 already recorded (so one slow computation serves every
    process), and computed only if none exists yet.
    """
    with _zeros_sha256_lock:
        if size not in _zeros_sha256_memo:
            recorded = (
                Version.objects.filter(number=0, size=size, note=EMPTY_NOTE)
                .filter(image__file_standard=FileStandard.RAW)
                .values_list("sha256", flat=True)
                .first()
            )
            _zeros_sha256_memo[size] = recorded or compute_zeros_sha256(size)
        return _zeros_sha256_memo[size]


def compute_zeros_sha256(size: int) -> str:
    """Hash ``size`` zero bytes, streaming one shared 1 MiB buffer (~1.3 GB/s)."""
    digest = hashlib.sha256()
    full, rest = divmod(size, len(ZERO_CHUNK))
    for _ in range(full):
        digest.update(ZERO_CHUNK)
    digest.update(memoryview(ZERO_CHUNK)[:rest])
    return digest.hexdigest()


# --- Create -------------------------------------------------------------------------


def image_create(
    *,
    actor: Actor,
    owner: User,
    name: str,
    type: str = ImageType.SINGLE,
    file_standard: str = FileStandard.RAW,
    compression: str = Compression.NONE,
    target_disk: str = "/dev/sda",
    transfer_protocol: str = TransferProtocol.HTTP,
    description: str = "",
    keep_versions: int | None = None,
) -> Image:
    """Create an image owned by ``owner`` with its empty version 0 of BAAS_NEW_IMAGE_SIZE.

    ``actor`` creates images for themselves, an administrator for anyone
    (``accounts.rules.can_manage_user``), and system images only as a moderator
    or administrator. Raises ``NotYours`` or ``InvalidInput``.
    """
    if not can_manage_user(actor, owner):
        raise NotYours("You may create images only for yourself.")
    image = Image(
        owner=owner,
        name=name,
        type=type,
        file_standard=file_standard,
        compression=compression,
        target_disk=target_disk,
        transfer_protocol=transfer_protocol,
        description=description,
        keep_versions=keep_versions,
    )
    return image_create_from(actor=actor, image=image)


def image_create_from(*, actor: Actor, image: Image) -> Image:
    """Save a new, unsaved ``image`` and store its empty version 0 (also used by the admin)."""
    if not rules.can_create_image(actor, image.type):
        raise NotYours("Only moderators and administrators create system images.")
    lifecycle.image_expiry_apply(image)
    _full_clean(image)
    size = settings.BAAS_NEW_IMAGE_SIZE
    try:
        with transaction.atomic():
            image.save(force_insert=True)
            version = _store_empty_version(image, size, actor)
            audit_record(
                actor=actor, action="image.create", target=image, name=image.name, type=image.type
            )
            version_received(version)  # a qcow2 one: mapped, and the disk it describes made
    except BaseException:
        get_storage().delete_image(image.uuid)
        raise
    return image


def _store_empty_version(image: Image, size: int, actor: Actor) -> Version:
    compression = Compression.NONE
    if image.file_standard == FileStandard.QCOW2:
        stored, sha256 = _store_empty_qcow2(image.uuid, size)
    elif image.compression == Compression.ZSTD and size:
        stored, sha256 = _store_empty_zstd(image.uuid, size), zeros_sha256(size)
        compression = Compression.ZSTD
    else:
        stored, sha256 = get_storage().create_sparse(image.uuid, 0, size), zeros_sha256(size)
    version = Version.objects.create(
        image=image,
        number=0,
        size=size if compression == Compression.ZSTD else stored.size,
        virtual_size=size,
        sha256=sha256,
        stored_size=stored.allocated,
        stored_compression=compression,
        uploaded_by=actor if isinstance(actor, User) and actor.pk else None,
        note=EMPTY_NOTE,
    )
    if image.file_standard != FileStandard.QCOW2:  # (a qcow2 one is mapped by its processing)
        version_map_store(version, empty_map(size, sha256))
    return version


def _store_empty_zstd(image_uuid: uuid.UUID, size: int) -> StoredFile:
    """Version 0 of a zstd image, stored as the compression job would store it (zero frames
    and their seek table): written at once, where compressing 6 GiB of zeros would take
    a worker a quarter of a minute."""
    with get_storage().open_write(image_uuid, sparse=False) as pending:
        pending.write(zeros_in_frames(size))
        return pending.commit(0, Compression.ZSTD)


def _store_empty_qcow2(image_uuid: uuid.UUID, size: int) -> tuple[StoredFile, str]:
    """An empty qcow2 file of virtual size ``size`` (a few hundred KiB), made by qemu-img.

    qemu-img writes a scratch ``.part`` file in the image's directory (the
    stale-upload purge removes it after a crash), which is then stored as
    version 0 like any upload.
    """
    storage = get_storage()
    with storage.scratch_file(image_uuid, ".qcow2") as scratch:
        subprocess.run(  # noqa: S603 - fixed program, our own path and an int
            [QEMU_IMG, "create", "-q", "-f", "qcow2", str(scratch), str(size)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        digest = hashlib.sha256()
        with open(scratch, "rb") as source, storage.open_write(image_uuid) as pending:
            while chunk := source.read(len(ZERO_CHUNK)):
                digest.update(chunk)
                pending.write(chunk)
            return pending.commit(0), digest.hexdigest()


# --- Update -------------------------------------------------------------------------


def image_update(
    *,
    actor: Actor,
    image: Image,
    associated_images: Iterable[Image] | None = None,
    maintainers: Iterable[User] | None = None,
    **fields: Any,
) -> Image:
    """Change an image's metadata; only the fields given change.

    Type changes follow ``rules.can_change_image_type``, maintainers only
    administrators assign (and only moderators can be maintainers); the file
    standard is fixed at creation. A changed compression schedules the
    rewriting of every version. Raises ``NotYours`` or ``InvalidInput``.
    """
    if not rules.can_write_image(actor, image):
        raise NotYours("You may read this image but not change it.")
    old_type, old_keep = image.type, image.keep_versions
    _check_type_change(actor, image, fields.pop("type", None))
    _check_file_standard(image, fields.pop("file_standard", None))
    old_compression = image.compression
    for name in SIMPLE_FIELDS:
        if name in fields:
            setattr(image, name, fields.pop(name))
    if fields:
        raise TypeError(f"image_update() got unexpected fields {sorted(fields)}")
    lifecycle.image_expiry_apply(image, old_type=old_type)
    _full_clean(image)
    with transaction.atomic():
        image.save()
        changed = _set_relations(actor, image, associated_images, maintainers)
        audit_record(actor=actor, action="image.update", target=image, changed=changed)
        if image.compression != old_compression:
            image_process(image)  # each version stored anew as it now asks
        if image.keep_versions != old_keep:
            lifecycle.versions_prune_schedule(image)
        if image.type != old_type:
            lifecycle.user_data_pins_sync(image)
    return image


def _check_type_change(actor: Actor, image: Image, new_type: str | None) -> None:
    if new_type is None or new_type == image.type:
        return
    if not rules.can_change_image_type(actor, image.type, new_type):
        raise NotYours("Only moderators and administrators make or unmake system images.")
    special = {ImageType.BOOT, ImageType.CUSTOM_INIT} & {image.type, new_type}
    setups = setups_pinning(image=image)
    if special and setups.exists():
        # A setup's rules (one boot image, nothing written for it, …) depend on the type.
        raise ImageConflict(
            f'The image "{image.name}" is pinned in the setup(s) {describe_setups(setups)}: '
            f"remove it from them before making it a {new_type} image instead of {image.type}."
        )
    mounting = setups.filter(frozen_images__image=image, frozen_images__mount=Mount.NETWORK)
    if mounting.exists():  # validate_mount's rule, which the pin checked, holds after it
        raise ImageConflict(
            f'The image "{image.name}" is mounted over the network by the setup(s) '
            f"{describe_setups(mounting.distinct())}, and only user data images are: remove "
            f"it from them before making it a {new_type} image."
        )
    image.type = new_type


def _check_file_standard(image: Image, new_standard: str | None) -> None:
    if new_standard is not None and new_standard != image.file_standard:
        raise InvalidInput(
            {
                "file_standard": "The file standard is fixed when an image is created: "
                "create a new image for a different one."
            }
        )


def _set_relations(
    actor: Actor,
    image: Image,
    associated: Iterable[Image] | None,
    maintainers: Iterable[User] | None,
) -> list[str]:
    changed = []
    if associated is not None:
        image.associated_images.set(_check_associated(actor, image, list(associated)))
        changed.append("associated_images")
    if maintainers is not None:
        image.maintainers.set(_check_maintainers(actor, list(maintainers)))
        changed.append("maintainers")
    return changed


def _check_associated(actor: Actor, image: Image, others: list[Image]) -> list[Image]:
    for other in others:
        if other.pk == image.pk:
            raise InvalidInput({"associated_images": "An image cannot be associated with itself."})
        if not rules.can_read_image(actor, other):
            raise InvalidInput({"associated_images": f"No such image: {other.pk}."})
    return others


def _check_maintainers(actor: Actor, users: list[User]) -> list[User]:
    if not rules.can_assign_maintainers(actor):
        raise NotYours("Only administrators assign maintainers.")
    for user in users:
        if not rules.is_moderator(user):
            message = f"{user.username} is not a moderator; only moderators maintain images."
            raise InvalidInput({"maintainers": message})
    return users


def _full_clean(image: Image) -> None:
    try:
        image.full_clean()
    except DjangoValidationError as exc:
        raise InvalidInput(exc.message_dict) from exc


# --- Delete -------------------------------------------------------------------------


def image_delete(*, actor: Actor, image: Image) -> None:
    """Delete an image, its versions, and (after the commit) its files.

    Refused with 409 while a setup pins any of its versions, naming the setups,
    and while an app built on the catalogue holds it (``catalogue.holders``: a machine
    has it mounted over the network).
    Raises ``NotYours`` if ``actor`` may not delete it.
    """
    if not rules.can_delete_image(actor, image):
        raise NotYours("Only the image's owner or an administrator may delete it.")
    image_uuid = image.uuid
    with transaction.atomic():
        Image.objects.select_for_update().filter(pk=image_uuid).first()
        _check_not_pinned(image)
        audit_record(actor=actor, action="image.delete", target=image, name=image.name)
        try:
            image.delete()
        except ProtectedError as exc:
            raise ImageConflict(
                f"The image {image.name} is still in use and cannot be deleted."
            ) from exc
        transaction.on_commit(lambda: get_storage().delete_image(image_uuid))
        transaction.on_commit(lambda: boot_cache_forget(image_uuid=image_uuid))


def _check_not_pinned(image: Image) -> None:
    setups = setups_pinning(image=image)
    if setups.exists():
        raise ImageConflict(
            f'The image "{image.name}" is pinned in the setup(s) {describe_setups(setups)}: '
            "remove it from them before deleting it."
        )
    refusal = holders.image_delete_refusal(image=image)
    if refusal:
        raise ImageConflict(refusal)
