"""Dashboard pages for images and setups.

Views are thin, like the API's: a form parses the input, one selector or
service call does the work, and a service's refusal (400, 403, 409) is shown
on the form or the page. Who may do what is ``catalogue.rules``, enforced by
the selectors and services; images a user may not read answer 404, as in the API.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from accounts.http import AuthenticatedHttpRequest
from baas_site.errors import error_text
from baas_site.exceptions import DomainError, Forbidden, Invalid
from catalogue import layouts, rules
from catalogue.exceptions import ImageConflict, SetupConflict
from catalogue.filters import ImageFilter
from catalogue.forms import (
    FrozenImageForm,
    ImageCreateForm,
    ImageEditForm,
    ImageFilterForm,
    SetupForm,
    add_service_errors,
)
from catalogue.forms_setups import PARTITION_TYPES, LayoutForms, size_text
from catalogue.models import Image, ImageSetup, Version
from catalogue.selectors import images as image_selectors
from catalogue.selectors import setups as setup_selectors
from catalogue.selectors.usage import image_storage
from catalogue.services import images as image_services
from catalogue.services import setups as setup_services

PAGE_SIZE = 20
# What services raise when they refuse: bad input (400) or not allowed (403).
REFUSALS = (Invalid, Forbidden)


# --- Images ---------------------------------------------------------------------------


def with_latest(images: Iterable[Image]) -> list[tuple[Image, Version | None]]:
    """Each of ``images`` with its newest version, from the prefetched versions."""
    return [
        (image, max(image.versions.all(), key=lambda v: v.number, default=None)) for image in images
    ]


def _readable(
    request: AuthenticatedHttpRequest, image_id: uuid.UUID, *, full: bool = True
) -> Image:
    return image_selectors.image_get_readable(actor=request.user, image_id=str(image_id), full=full)


@login_required
def image_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    filters = ImageFilterForm(request.GET)
    values = filters.cleaned_data if filters.is_valid() else {}
    readable = image_selectors.image_list_readable(actor=request.user)
    images = ImageFilter(values, queryset=readable).qs
    page = Paginator(images, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filters": filters,
        "page": page,
        "images": with_latest(page.object_list),
        "query": query.urlencode(),
    }
    return render(request, "catalogue/image_list.html", context)


@login_required
def image_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = ImageCreateForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            image = image_services.image_create(
                actor=request.user, owner=request.user, **form.cleaned_data
            )
        except REFUSALS as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f'Image "{image.name}" created with an empty version 0.')
            return redirect("image", image_id=image.pk)
    return render(request, "catalogue/image_form.html", {"form": form, "creating": True})


@login_required
def image_detail(request: AuthenticatedHttpRequest, image_id: uuid.UUID) -> HttpResponse:
    image = _readable(request, image_id)
    versions = sorted(image.versions.all(), key=lambda v: -v.number)
    logical, held = image_storage(image=image, versions=versions)
    context = {
        "image": image,
        "versions": versions,
        "storage_logical": logical,
        "storage_held": held,
        "can_write": rules.can_write_image(request.user, image),
        "can_delete": rules.can_delete_image(request.user, image),
        "max_size": settings.BAAS_MAX_IMAGE_SIZE,
        "upload_url": request.build_absolute_uri(f"/api/image/{image.uuid}"),
        "site_url": request.build_absolute_uri("/").rstrip("/"),
    }
    return render(request, "catalogue/image_detail.html", context)


UPLOAD_CLIENT = settings.BASE_DIR / "contrib" / "upload" / "baas-upload"


@require_safe
def upload_client(request: HttpRequest) -> FileResponse:
    """The upload client (``contrib/upload/baas-upload``), for researchers to fetch from
    their own BAAS. Open to all, like the source it is: it holds nothing of this site.

    Deprecated for the ``baas`` client (``cli/``, docs/cli.md): served for one more
    release; the script says so each time it runs, and so does this answer's
    ``Deprecation`` header (RFC 9745)."""
    try:
        script = UPLOAD_CLIENT.open("rb")
    except FileNotFoundError:
        raise Http404("This installation does not carry the upload client.") from None
    response = FileResponse(
        script, as_attachment=True, filename="baas-upload", content_type="text/x-python"
    )
    response["Deprecation"] = "@1796428800"  # RFC 9745: since 2026-12-05
    return response


@login_required
def image_edit(request: AuthenticatedHttpRequest, image_id: uuid.UUID) -> HttpResponse:
    image = image_selectors.image_get_writable(actor=request.user, image_id=str(image_id))
    name = image.name
    form = ImageEditForm(
        request.POST or None,
        user=request.user,
        current_type=image.type,
        initial=ImageEditForm.initial_for(image),
    )
    if request.method == "POST" and form.is_valid():
        try:
            image_services.image_update(actor=request.user, image=image, **form.cleaned_data)
        except REFUSALS as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f'Image "{image.name}" saved.')
            return redirect("image", image_id=image.pk)
    context = {"form": form, "image": image, "name": name, "creating": False}
    return render(request, "catalogue/image_form.html", context)


@login_required
def image_delete(request: AuthenticatedHttpRequest, image_id: uuid.UUID) -> HttpResponse:
    image = image_selectors.image_get_deletable(
        actor=request.user, image_id=str(image_id), full=False
    )
    error = ""
    if request.method == "POST":
        try:
            image_services.image_delete(actor=request.user, image=image)
        except ImageConflict as exc:
            error = error_text(exc)
        else:
            messages.success(request, f'Image "{image.name}" and all its versions deleted.')
            return redirect("images")
    context = {"image": image, "error": error}
    return render(request, "catalogue/image_delete.html", context, status=409 if error else 200)


# --- Setups ---------------------------------------------------------------------------
# The pages show the signed-in user's own setups; moderators and administrators
# reach other people's through the API and Django admin.


def _my_setup(request: AuthenticatedHttpRequest, setup_id: uuid.UUID) -> ImageSetup:
    return setup_selectors.setup_get(owner=request.user, setup_uuid=setup_id)


def _save_setup(form: SetupForm, save: Callable[[], ImageSetup]) -> ImageSetup | None:
    """Run ``save`` (a setup service call); its model errors go on ``form``."""
    try:
        return save()
    except DjangoValidationError as exc:
        form.add_error(None, exc)
    return None


@login_required
def setup_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    setups = setup_selectors.setup_list(owner=request.user)
    return render(request, "catalogue/setup_list.html", {"setups": setups})


@login_required
def setup_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = SetupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        setup = _save_setup(
            form,
            lambda: setup_services.setup_create(
                actor=request.user, owner=request.user, **form.cleaned_data
            ),
        )
        if setup is not None:
            messages.success(request, f'Setup "{setup.name}" created: now add its images.')
            return redirect("setup", setup_id=setup.pk)
    return render(request, "catalogue/setup_form.html", {"form": form, "creating": True})


def _partition_rows(setup: ImageSetup) -> list[dict[str, Any]]:
    """The setup's partition table as shown: each partition with its device and its images."""
    table = layouts.as_json(setup.layout)
    if table is None:
        return []
    pinned = setup.frozen_images.all()
    return [
        {
            **item,
            "size_text": None if item["size"] is None else size_text(item["size"]),
            "images": [frozen for frozen in pinned if frozen.partition == item["label"]],
        }
        for item in table["partitions"]
    ]


def _partition_choice(row: dict[str, Any]) -> str:
    """``root (/dev/sda1, 4 MiB)``, and what the partition already holds."""
    held = ", ".join(f"{f.image.name} v{f.version.number}" for f in row["images"])
    return (
        f"{row['label']} ({row['device']}, {row['size_text'] or 'rest of the disk'}"
        f"{f'; holds {held}' if held else ''})"
    )


def _image_form(setup: ImageSetup, data: QueryDict | None = None) -> FrozenImageForm:
    """The "add an image" form, with a partition choice when the setup has a table."""
    choices = [(row["label"], _partition_choice(row)) for row in _partition_rows(setup)]
    return FrozenImageForm(
        data,
        images=image_selectors.image_list_readable(actor=setup.owner),
        partitions=choices,
        table_disk=(setup.layout or {}).get("disk", ""),
    )


def _setup_page(
    request: AuthenticatedHttpRequest,
    setup: ImageSetup,
    *,
    form: FrozenImageForm | None = None,
    layout_forms: LayoutForms | None = None,
) -> HttpResponse:
    context = {
        "setup": setup,
        "form": form or _image_form(setup),
        "partitions": _partition_rows(setup),
        "layout_forms": layout_forms or LayoutForms(layout=setup.layout),
        "partition_types": PARTITION_TYPES,
    }
    return render(request, "catalogue/setup_detail.html", context)


@login_required
def setup_detail(request: AuthenticatedHttpRequest, setup_id: uuid.UUID) -> HttpResponse:
    setup = _my_setup(request, setup_id)
    form = _image_form(setup, request.POST or None)
    if request.method == "POST" and form.is_valid():
        image_id, number = form.cleaned_data["version"]
        try:
            setup_services.setup_image_add(
                actor=request.user,
                setup=setup,
                image=Image.objects.filter(pk=image_id).first(),
                version_number=number,
                sync=form.cleaned_data["sync"],
                target_disk=form.cleaned_data["target_disk"],
                mount=form.cleaned_data["mount"],
                partition=form.cleaned_data.get("partition", ""),
            )
        except DomainError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, "Image added to the setup.")
            return redirect("setup", setup_id=setup.pk)
    return _setup_page(request, setup, form=form)


@login_required
def setup_layout(request: AuthenticatedHttpRequest, setup_id: uuid.UUID) -> HttpResponse:
    """Declare, change (``more``: one row more, nothing saved) or ``remove`` the partition table.

    Posted from the setup page, which shows the form again with the refusal.
    """
    setup = _my_setup(request, setup_id)
    if request.method != "POST":
        return redirect(reverse("setup", kwargs={"setup_id": setup.pk}) + "#layout-form")
    more, remove = "more" in request.POST, "remove" in request.POST
    # A refused removal shows the table as it stays; anything else, the rows as sent.
    editor = LayoutForms(None if remove else request.POST, layout=setup.layout, more=more)
    if not more and (remove or editor.is_valid()):
        layout = None if remove else editor.layout()
        try:
            setup_services.setup_update(actor=request.user, setup=setup, layout=layout)
        except (DomainError, DjangoValidationError) as exc:
            editor.add_service_errors(exc)
        else:
            done = "removed" if layout is None else "saved"
            messages.success(request, f'The partition table of "{setup.name}" is {done}.')
            return redirect(reverse("setup", kwargs={"setup_id": setup.pk}) + "#layout")
    return _setup_page(request, setup, layout_forms=editor)


@login_required
def setup_edit(request: AuthenticatedHttpRequest, setup_id: uuid.UUID) -> HttpResponse:
    setup = _my_setup(request, setup_id)
    name = setup.name
    initial = {"name": setup.name, "description": setup.description}
    form = SetupForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        saved = _save_setup(
            form,
            lambda: setup_services.setup_update(
                actor=request.user, setup=setup, **form.cleaned_data
            ),
        )
        if saved is not None:
            messages.success(request, f'Setup "{saved.name}" saved.')
            return redirect("setup", setup_id=setup.pk)
    context = {"form": form, "setup": setup, "name": name, "creating": False}
    return render(request, "catalogue/setup_form.html", context)


@login_required
def setup_delete(request: AuthenticatedHttpRequest, setup_id: uuid.UUID) -> HttpResponse:
    setup = _my_setup(request, setup_id)
    error = ""
    if request.method == "POST":
        try:
            setup_services.setup_delete(actor=request.user, setup=setup)
        except SetupConflict as exc:
            error = error_text(exc)
        else:
            messages.success(request, f'Setup "{setup.name}" deleted.')
            return redirect("setups")
    context = {"setup": setup, "error": error}
    return render(request, "catalogue/setup_delete.html", context, status=409 if error else 200)


@login_required
@require_POST
def setup_image_remove(
    request: AuthenticatedHttpRequest, setup_id: uuid.UUID, image_id: uuid.UUID
) -> HttpResponse:
    setup = _my_setup(request, setup_id)
    frozen = setup_selectors.frozen_get(setup=setup, image_uuid=image_id)
    setup_services.setup_image_remove(actor=request.user, setup=setup, frozen=frozen)
    messages.success(request, f'"{frozen.image.name}" removed from the setup.')
    return redirect("setup", setup_id=setup.pk)
