"""Dashboard pages for machines and deployments.

Thin views: the selectors read (with the permission rules), the services
write and raise the same errors the API answers with; a page shows those
errors as messages. The deployment page polls ``GET /api/deployment/<id>``
(static/js/deployment.js) while the deployment runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.rules import Actor
from baas_site.errors import error_text
from baas_site.exceptions import DomainError, Invalid, NotFound
from catalogue.models import ImageType
from flashing import rules, selectors
from flashing.forms import DeployForm, LeaseForm
from flashing.models import (
    FINAL_STATES,
    RUNNING_STATES,
    Deployment,
    DeploymentImage,
    DeploymentState,
    DiskContent,
    Machine,
    MachineState,
)
from flashing.services import deployments as deployment_services
from flashing.services import leases as lease_services
from flashing.services.boot import deployment_boot_again, deployment_get_bootable
from flashing.services.mount_urls import mount_url


def _machine(mac: str) -> Machine:
    """The machine of a page URL; 404 for a malformed MAC too (a page has no 400)."""
    try:
        return selectors.machine_get(mac=mac)
    except Invalid as exc:
        raise Http404("No such machine.") from exc


def _mac(machine: Machine) -> str:
    macs = list(machine.mac_addresses.all())
    return macs[0].address if macs else ""


@dataclass(frozen=True)
class DiskRow:
    path: str
    size: int | None
    content: DiskContent | None


def _disk_rows(machine: Machine) -> list[DiskRow]:
    """Each disk with what is on it; contents on disks no longer registered are shown too."""
    sizes = {d.path: d.size for d in machine.disks.all()}
    contents = {c.disk: c for c in machine.disk_contents.all()}
    return [
        DiskRow(path=path, size=sizes.get(path), content=contents.get(path))
        for path in sorted(sizes.keys() | contents.keys())
    ]


# --- Machines ---------------------------------------------------------------------------


@login_required
@require_GET
def machine_list(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state") or None
    if state not in (None, *MachineState.values):
        state = None
    machines = list(selectors.machine_list(state=state))
    rows = [
        {"machine": m, "mac": _mac(m), "lease": selectors.lease_active(machine=m)} for m in machines
    ]
    context = {"rows": rows, "states": MachineState.choices, "state": state or ""}
    return render(request, "flashing/machine_list.html", context)


@login_required
@require_GET
def machine_detail(request: HttpRequest, mac: str) -> HttpResponse:
    machine = _machine(mac)
    return render(request, "flashing/machine_detail.html", _detail_context(request, machine))


def _detail_context(request: HttpRequest, machine: Machine, **forms: Any) -> dict[str, Any]:
    user = request.user
    lease = selectors.lease_active(machine=machine)
    holder = lease is not None and lease.user_id == user.pk
    can_deploy = machine.managed and rules.can_deploy_on(user, lease)
    return {
        "machine": machine,
        "mac": _mac(machine),
        "disks": _disk_rows(machine),
        "lease": lease,
        "is_holder": holder,
        "can_lease": lease is None and rules.can_lease_machine(user),
        "can_release": lease is not None and rules.can_end_lease(user, lease),
        "can_deploy": can_deploy,
        "lease_form": forms.get("lease_form") or LeaseForm(),
        "deploy_form": forms.get("deploy_form") or (DeployForm(user=user) if can_deploy else None),
        "deployments": selectors.deployment_list(user=user, machine=machine)[:10],
    }


def _back(machine: Machine) -> HttpResponse:
    return redirect("machines:detail", mac=_mac(machine))


@login_required
@require_POST
def machine_lease(request: HttpRequest, mac: str) -> HttpResponse:
    """Lease the machine, or extend the lease the user holds (the service decides which)."""
    machine = _machine(mac)
    form = LeaseForm(request.POST)
    if not form.is_valid():
        context = _detail_context(request, machine, lease_form=form)
        return render(request, "flashing/machine_detail.html", context, status=400)
    try:
        lease, created = lease_services.lease_acquire(
            user=request.user, machine=machine, hours=form.cleaned_data["hours"]
        )
    except DomainError as exc:
        messages.error(request, error_text(exc))
        return _back(machine)
    verb = "Leased" if created else "Extended your lease of"
    messages.success(request, f"{verb} {machine.name} until {lease.ends_at:%Y-%m-%d %H:%M %Z}.")
    return _back(machine)


@login_required
@require_POST
def machine_release(request: HttpRequest, mac: str) -> HttpResponse:
    machine = _machine(mac)
    lease = selectors.lease_active(machine=machine)
    if lease is None:
        messages.info(request, f"{machine.name} is not leased.")
        return _back(machine)
    lease_services.lease_end(actor=request.user, lease=lease)
    messages.success(request, f"Released {machine.name}; it is being reset for the next user.")
    return _back(machine)


@login_required
@require_POST
def machine_deploy(request: HttpRequest, mac: str) -> HttpResponse:
    machine = _machine(mac)
    form = DeployForm(request.POST, user=request.user)
    if not form.is_valid():
        context = _detail_context(request, machine, deploy_form=form)
        return render(request, "flashing/machine_detail.html", context, status=400)
    try:
        deployment = deployment_services.deployment_enqueue(
            actor=request.user,
            machine=machine,
            setup=form.cleaned_data["setup"],
            sync=form.cleaned_data["sync"],
        )
    except DomainError as exc:
        messages.error(request, error_text(exc))
        return _back(machine)
    messages.success(request, f"Deployment #{deployment.pk} is queued on {machine.name}.")
    return redirect("machines:deployment", deployment_id=deployment.pk)


# --- Deployments ---------------------------------------------------------------------------


def _image_label(item: DeploymentImage) -> str:
    name = item.image.name if item.image else "a deleted image"
    if item.direction == DeploymentImage.Direction.SYNC:
        return f"Bring back {item.disk} as {name}"
    if item.direction == DeploymentImage.Direction.MOUNT:
        return f"Serve {name} v{item.version_number} over the network as {item.disk}"
    if item.image and item.image.type == ImageType.BOOT:
        return f"Boot {name} v{item.version_number} over the network (a boot image)"
    return f"Write {name} v{item.version_number} to {item.disk}"


@login_required
@require_GET
def deployment_detail(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
    images = list(deployment.images.select_related("image"))
    labels = {str(i.image_id): i.image.name for i in images if i.image}
    context = {
        "deployment": deployment,
        "mac": _mac(deployment.machine),
        "images": [(item, _image_label(item)) for item in images],
        "image_names": labels,
        "state_labels": dict(DeploymentState.choices),
        "events": list(deployment.events.all()),
        "mounts": [(mount, mount_url(mount)) for mount in deployment.network_mounts.all()],
        "finished": deployment.state in FINAL_STATES,
        "can_cancel": deployment.state not in FINAL_STATES
        and rules.can_cancel_deployment(request.user, deployment),
        "can_boot_again": deployment.state in RUNNING_STATES
        and _may_boot_again(request.user, deployment),
    }
    return render(request, "flashing/deployment_detail.html", context)


def _may_boot_again(user: Actor, deployment: Deployment) -> bool:
    try:
        deployment_get_bootable(actor=user, deployment_id=deployment.pk)
    except NotFound:
        return False
    return True


@login_required
@require_POST
def deployment_boot(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """A manual boot: a new attempt, armed for the machine's next network boot."""
    deployment = deployment_get_bootable(actor=request.user, deployment_id=deployment_id)
    try:
        deployment = deployment_boot_again(actor=request.user, deployment=deployment)
        messages.success(
            request,
            f"Attempt {deployment.attempt} is armed: boot {deployment.machine.name} from the "
            "network now.",
        )
    except DomainError as exc:
        messages.error(request, error_text(exc))
    return redirect("machines:deployment", deployment_id=deployment.pk)


@login_required
@require_POST
def deployment_cancel(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = selectors.deployment_get(user=request.user, deployment_id=deployment_id)
    try:
        deployment_services.deployment_cancel(actor=request.user, deployment=deployment)
        messages.success(request, f"Deployment #{deployment.pk} is cancelled.")
    except DomainError as exc:
        messages.error(request, error_text(exc))
    return redirect("machines:deployment", deployment_id=deployment.pk)
