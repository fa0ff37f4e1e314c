"""The home page: the signed-in user's images, setups, leases and unfinished deployments."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch, QuerySet
from django.http import HttpResponse
from django.shortcuts import render

from accounts.http import AuthenticatedHttpRequest
from catalogue.selectors.images import image_list_owned
from catalogue.selectors.setups import setup_list
from catalogue.views import with_latest
from flashing.models import FINAL_STATES, Lease, MacAddress
from flashing.selectors import deployment_queryset

HOME_IMAGES = 10


def _my_leases(user: Any) -> QuerySet[Lease]:
    macs = Prefetch("machine__mac_addresses", queryset=MacAddress.objects.order_by("id"))
    return (
        Lease.objects.filter(user=user, ended_at__isnull=True)
        .select_related("machine")
        .prefetch_related(macs)
        .order_by("ends_at")
    )


def _progress(deployment: Any) -> int | None:
    """Percent of the deployment's bytes moved so far; None before any size is known."""
    total = sum(image.bytes_total for image in deployment.images.all())
    done = sum(image.bytes_done for image in deployment.images.all())
    return round(100 * done / total) if total else None


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    user = request.user
    running = (
        deployment_queryset()
        .filter(requested_by=user)
        .exclude(state__in=FINAL_STATES)
        .order_by("created_at", "id")
    )
    # Each with its progress, for the template.
    deployments = [(deployment, _progress(deployment)) for deployment in running]
    images = image_list_owned(owner=user).order_by("-updated_at")
    context = {
        "images": with_latest(images[:HOME_IMAGES]),
        "image_count": images.count(),
        "setups": setup_list(owner=user),
        "leases": _my_leases(user),
        "deployments": deployments,
    }
    return render(request, "home.html", context)
