"""The import page of an image: the form, and the image's recent imports."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from baas_site.exceptions import DomainError
from imports import rules, selectors
from imports.forms import ImportForm
from imports.services import jobs


@login_required
def image_import(request: HttpRequest, image_id: uuid.UUID) -> HttpResponse:
    try:
        image = selectors.image_for_import(actor=request.user, image_id=image_id)
    except DomainError:
        return render(request, "404.html", status=404)
    form = ImportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = jobs.import_create(
                actor=request.user, image=image, request=jobs.ImportRequest(**form.request_values())
            )
        except DomainError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Import {job.pk} queued: follow it below.")
            return redirect("image-import", image_id=image.uuid)
    context = {
        "image": image,
        "form": form,
        "can_import": rules.can_import_image(request.user, image),
        "imports": selectors.imports_of_image(actor=request.user, image=image)[:20],
    }
    return render(request, "imports/image_import.html", context)
