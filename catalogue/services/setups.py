"""Writes for image setups: create, rename, delete, and pin images into them.

The rules for what a setup may hold live in ``frozen_image_check``, called by
the API (through ``setup_image_add``) and the admin inline form alike:

* only images the setup's *owner* may read;
* a version of that image that exists;
* ``sync`` only on images the owner may write, and always on for user data;
* ``mount="network"`` (served over NBD instead of flashed) only for user data;
* no image twice, and no two images on the same disk;
* at most one boot image, a version of it BAAS can boot (a boot partition
  with a kernel: ``catalogue.services.bootfiles``), never synced back, and on
  no disk (it is served over the network, not written);
* at most one custom init image, a version of it that is a filesystem (FAT,
  ext or ISO 9660) the flashed system's first-boot hook can find;
* with a partition table (``catalogue.layouts``): an image pinned to a
  partition by label, a partition the table has, no larger than the partition
  when its size is declared, and no image over the whole of the table's disk.
  Whether the table fits a machine's disk is checked when it is queued there
  (``flashing.services.deployments``), where the disk is known.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import QuerySet

from accounts.models import User
from accounts.rules import Actor
from accounts.services import audit_record
from catalogue import holders, layouts, rules
from catalogue.exceptions import InvalidInput, SetupConflict, SetupNotFound
from catalogue.models import (
    FileStandard,
    Image,
    ImageFrozen,
    ImageSetup,
    ImageType,
    Mount,
    Version,
    validate_mount,
    validate_target_disk,
)
from catalogue.services.bootfiles import (
    BootImageError,
    boot_files_for,
    filesystem_kind,
    version_head,
)
from catalogue.services.renditions import disk_size

CONFLICT = "conflict"


def raise_api_error(exc: DjangoValidationError) -> NoReturn:
    """A model-level ``ValidationError`` as the API answer: 409 for conflicts, else 400."""
    errors = exc.error_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.error_list}
    for items in errors.values():
        for error in items:
            if error.code == CONFLICT:
                raise SetupConflict(next(iter(error)))
    raise InvalidInput({field: [m for e in items for m in e] for field, items in errors.items()})


def _conflict(field: str, message: str) -> DjangoValidationError:
    return DjangoValidationError({field: DjangoValidationError(message, code=CONFLICT)})


def _check_rights(owner: Any, image: Image, sync: bool) -> None:
    if not rules.can_read_image(owner, image):
        raise DjangoValidationError({"image": f"No such image, or {owner} may not read it."})
    if sync and not rules.can_write_image(owner, image):
        message = f"Only images {owner} may write can be synced back."
        if image.type == ImageType.USER_DATA:
            message = (
                f"User data images are always synced back, and {owner} may not write this one."
            )
        raise DjangoValidationError({"sync": message})


def _check_sync_back(image: Image, sync: bool, mount: str) -> None:
    """A flashed disk comes back raw; a qcow2 image stores qcow2 files: it is mounted instead."""
    if sync and mount != Mount.NETWORK and image.file_standard == FileStandard.QCOW2:
        raise DjangoValidationError(
            {
                "sync": f'"{image.name}" is a qcow2 image: a machine writes the raw disk it '
                "describes and would bring a raw disk back, which a qcow2 image does not "
                "store. Mount it over the network instead (mount: network), or sync a raw "
                "image."
            }
        )


def _takes_disk(image: Image, mount: str) -> bool:
    """A boot image and a network-mounted image take no disk: both are served over the network."""
    return image.type != ImageType.BOOT and mount != Mount.NETWORK


def _excluding(rows: QuerySet[ImageFrozen], pk: int | None) -> QuerySet[ImageFrozen]:
    """``rows`` without the row being changed (``pk``), if one is."""
    return rows if pk is None else rows.exclude(pk=pk)


def _check_disk(
    setup: ImageSetup, image: Image, disk: str, mount: str, exclude_pk: int | None
) -> None:
    # By id, not the reverse manager: a setup not saved yet (admin add form) has none.
    others = _excluding(ImageFrozen.objects.filter(setup_id=setup.pk), exclude_pk)
    others = others.select_related("image", "setup")
    for other in others:
        if other.image_id == image.pk:
            raise _conflict("image", f'"{image.name}" is already in setup "{setup.name}".')
        on_disks = _takes_disk(image, mount) and _takes_disk(other.image, other.mount)
        if on_disks and other.disk == disk:
            raise _conflict(
                "target_disk",
                f'"{other.image.name}" is already written to {disk} in setup "{setup.name}"; '
                "choose another target disk.",
            )


ONE_OF: dict[str, str] = {ImageType.BOOT: "boot image", ImageType.CUSTOM_INIT: "custom init image"}


def _check_one_of_type(setup: ImageSetup, image: Image, exclude_pk: int | None) -> None:
    """A setup boots at most one boot image and runs at most one custom init image."""
    if image.type not in ONE_OF:
        return
    others = ImageFrozen.objects.filter(setup_id=setup.pk, image__type=image.type)
    other = _excluding(others, exclude_pk).exclude(image=image).select_related("image").first()
    if other is not None:
        kind = ONE_OF[image.type]
        raise DjangoValidationError(
            {
                "image": f'Setup "{setup.name}" already has the {kind} "{other.image.name}": '
                f"a setup holds at most one {kind}. Remove that one first."
            }
        )


def _check_boot_version(image: Image, version: Version, sync: bool) -> None:
    if sync:
        raise DjangoValidationError(
            {
                "sync": "A boot image is served to the machine over the network, never "
                "written to its disks: there is nothing to sync back."
            }
        )
    if image.file_standard != FileStandard.RAW:
        raise DjangoValidationError(
            {"image": "A boot image is a raw boot partition; this one is qcow2."}
        )
    try:
        boot_files_for(version)
    except (BootImageError, OSError) as exc:
        raise DjangoValidationError(
            {"version": f'Version {version.number} of "{image.name}" cannot be booted: {exc}'}
        ) from exc


def _check_custom_init_version(image: Image, version: Version) -> None:
    try:
        kind = filesystem_kind(version_head(version))
    except OSError:
        kind = None
    if kind is None or image.file_standard != FileStandard.RAW:
        raise DjangoValidationError(
            {
                "version": f'Version {version.number} of the custom init image "{image.name}" '
                "is not a filesystem the system can find at its first boot: make it a FAT, "
                "ext or ISO 9660 filesystem labelled CIDATA (cloud-init) or BAASINIT (BAAS's "
                "first-boot hook)."
            }
        )


def effective_sync(image: Image, sync: bool) -> bool:
    """User data images are always synced back."""
    return True if image.type == ImageType.USER_DATA else sync


def frozen_image_check(
    *,
    setup: ImageSetup,
    image: Image,
    version: Version | None,
    sync: bool,
    target_disk: str = "",
    mount: str = Mount.FLASH,
    exclude_pk: int | None = None,
    partition: str = "",
) -> None:
    """Raise Django's ``ValidationError`` unless ``image`` at ``version`` may join ``setup``.

    Conflicts with the setup's other images carry the code ``"conflict"``.
    ``exclude_pk`` is the row being edited, if any. ``sync`` is taken as given:
    pass it through ``effective_sync`` first. ``partition`` pins the image to a
    partition of the setup's table by label.
    """
    _check_rights(setup.owner, image, sync)
    validate_mount(image.type, mount)
    _check_sync_back(image, sync, mount)
    if version is None or version.image_id != image.pk:
        raise DjangoValidationError({"version": f'"{image.name}" has no such version.'})
    if target_disk:
        try:
            validate_target_disk(target_disk)
        except DjangoValidationError as exc:
            raise DjangoValidationError({"target_disk": exc.messages}) from exc
    disk = target_disk or image.target_disk
    if partition:
        if target_disk:
            raise DjangoValidationError(
                {
                    "partition": "Give a partition or a target disk, not both: a partition is on "
                    "the disk of the setup's partition table."
                }
            )
        disk = _check_partition(setup.layout, image, version, partition, mount)
    _check_whole_disk(setup.layout, image, disk, mount)
    _check_disk(setup, image, disk, mount, exclude_pk)
    _check_one_of_type(setup, image, exclude_pk)
    if image.type == ImageType.BOOT:
        _check_boot_version(image, version, sync)
    elif image.type == ImageType.CUSTOM_INIT:
        _check_custom_init_version(image, version)


def _check_partition(
    layout: dict[str, Any] | None, image: Image, version: Version, label: str, mount: str
) -> str:
    """The device of partition ``label``, unless ``image`` may not go there (400)."""
    if not _takes_disk(image, mount):
        raise DjangoValidationError(
            {"partition": f'"{image.name}" is served over the network: it goes on no partition.'}
        )
    device = layouts.device_of(layout, label)
    if layout is None or device is None:
        have = ", ".join(f"'{p['label']}'" for p in (layout or {}).get("partitions", []))
        raise DjangoValidationError(
            {
                "partition": f"This setup's partition table has no partition '{label}'"
                + (f" (it has {have})." if have else ": it has no partition table.")
            }
        )
    size = layouts.size_of(layout, label)
    needed = disk_size(version)
    if size is not None and needed > size:
        raise DjangoValidationError(
            {
                "partition": f'Version {version.number} of "{image.name}" is '
                f"{layouts.mib(needed)}; partition '{label}' holds {layouts.mib(size)}."
            }
        )
    return device


def _check_whole_disk(layout: dict[str, Any] | None, image: Image, disk: str, mount: str) -> None:
    """Nothing is written over the whole disk that holds the setup's partition table."""
    if layout is not None and disk == layout["disk"] and _takes_disk(image, mount):
        raise _conflict(
            "partition",
            f'"{image.name}" would be written over the whole of {disk}, which holds this '
            "setup's partition table: pin it to one of its partitions (partition: a label).",
        )


def _check_layout_fits_images(setup: ImageSetup, layout: dict[str, Any] | None) -> None:
    """Every image already in ``setup`` still has its place under the new ``layout``."""
    for frozen in setup.frozen_images.select_related("image", "version"):
        disk = frozen.target_disk or frozen.image.target_disk
        try:
            if frozen.partition:
                disk = _check_partition(
                    layout, frozen.image, frozen.version, frozen.partition, frozen.mount
                )
            _check_whole_disk(layout, frozen.image, disk, frozen.mount)
        except DjangoValidationError as exc:
            message = "; ".join(exc.messages)
            raise _conflict("layout", f'"{frozen.image.name}" is in this setup: {message}') from exc


def _layout_value(setup: ImageSetup | None, layout: Any) -> dict[str, Any] | None:
    """The layout to store, checked against the setup's images (400 or 409)."""
    try:
        value = layouts.normalize(layout)
        if setup is not None:
            _check_layout_fits_images(setup, value)
    except DjangoValidationError as exc:
        raise_api_error(exc)
    return value


def _check_manages(actor: Actor, owner: User, *, creating: bool = False) -> None:
    """``actor`` may create (or manage) ``owner``'s setups; the same 404 as the selectors."""
    allowed = rules.can_create_setup_for if creating else rules.can_manage_setups_of
    if not allowed(actor, owner):
        raise SetupNotFound("No such user, or their setups are not yours to see.")


@transaction.atomic
def setup_create(
    *, actor: Actor, owner: User, name: str, description: str = "", layout: Any = None
) -> ImageSetup:
    """Create an empty setup for ``owner``; 404 unless ``rules.can_create_setup_for``.

    ``layout``: a partition table (``catalogue.layouts``), 400 unless well formed.
    """
    _check_manages(actor, owner, creating=True)
    layout = _layout_value(None, layout)
    setup = ImageSetup(owner=owner, name=name, description=description, layout=layout)
    setup.full_clean()
    setup.save()
    audit_record(actor=actor, action="setup.create", target=setup, name=name, owner=owner.username)
    return setup


@transaction.atomic
def setup_update(*, actor: Actor, setup: ImageSetup, **fields: Any) -> ImageSetup:
    """Change a setup's ``name``, ``description`` and ``layout``.

    404 unless ``can_manage_setups_of``; a layout is 400 unless well formed, 409
    when an image of the setup would lose its partition or not fit it.
    """
    _check_manages(actor, setup.owner)
    if "layout" in fields:
        _lock(setup)
        fields["layout"] = _layout_value(setup, fields["layout"])
    for name, value in fields.items():
        setattr(setup, name, value)
    setup.full_clean()
    setup.save()
    audit_record(actor=actor, action="setup.update", target=setup, fields=sorted(fields))
    return setup


def _check_deletable(setup: ImageSetup) -> None:
    # What apps built on the catalogue hold (flashing: a machine's default setup, one
    # still waiting in a queue) is not deleted behind the administrators' back.
    refusal = holders.setup_delete_refusal(setup=setup)
    if refusal:
        raise SetupConflict(refusal)


@transaction.atomic
def setup_delete(*, actor: Actor, setup: ImageSetup) -> None:
    """Delete a setup, unless it is a machine's default or waits in a queue (409).

    404 unless ``actor`` manages the owner's setups (``rules.can_manage_setups_of``).
    """
    _check_manages(actor, setup.owner)
    _check_deletable(setup)
    audit_record(actor=actor, action="setup.delete", target=setup, name=setup.name)
    setup.delete()


def _lock(setup: ImageSetup) -> ImageSetup:
    """Lock the setup row, so two concurrent additions cannot both take a disk."""
    ImageSetup.objects.select_for_update().filter(pk=setup.pk).first()
    return setup


@transaction.atomic
def setup_image_add(
    *,
    actor: Actor,
    setup: ImageSetup,
    image: Image | None,
    version_number: int,
    sync: bool = False,
    target_disk: str = "",
    mount: str = Mount.FLASH,
    partition: str = "",
) -> ImageFrozen:
    """Pin ``image`` at ``version_number`` into ``setup``; 400 or 409 when a rule forbids it.

    ``partition`` pins it to that partition of the setup's partition table.

    ``image`` is None when the caller found no image by that UUID: it answers
    the same as an image the owner may not read. 404 unless ``actor`` manages
    the owner's setups.
    """
    _check_manages(actor, setup.owner)
    _lock(setup)
    if image is None:
        raise InvalidInput({"image": [f"No such image, or {setup.owner} may not read it."]})
    version = image.versions.filter(number=version_number).first()
    sync = effective_sync(image, sync)
    try:
        frozen_image_check(
            setup=setup,
            image=image,
            version=version,
            sync=sync,
            target_disk=target_disk,
            mount=mount,
            partition=partition,
        )
    except DjangoValidationError as exc:
        raise_api_error(exc)
    assert version is not None  # frozen_image_check refuses a version that does not exist
    frozen = ImageFrozen.objects.create(
        setup=setup,
        image=image,
        version=version,
        sync=sync,
        target_disk=target_disk,
        mount=mount,
        partition=partition,
    )
    audit_record(
        actor=actor,
        action="setup.image_add",
        target=setup,
        image=str(image.pk),
        version=version_number,
        sync=sync,
        disk=frozen.disk,
        mount=mount,
        partition=partition,
    )
    setup.save(update_fields=["updated_at"])
    return frozen


@transaction.atomic
def setup_image_remove(*, actor: Actor, setup: ImageSetup, frozen: ImageFrozen) -> None:
    """Take a pinned image out of its setup; 404 unless ``actor`` manages the owner's setups."""
    _check_manages(actor, setup.owner)
    audit_record(
        actor=actor,
        action="setup.image_remove",
        target=setup,
        image=str(frozen.image_id),
        version=frozen.version.number,
    )
    frozen.delete()
    setup.save(update_fields=["updated_at"])
