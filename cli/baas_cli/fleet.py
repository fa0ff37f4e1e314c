"""``baas setup|machine|lease|deploy|deployment|token``: everything but images."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from baas_cli import output
from baas_cli.app import Json, Session, set_exit
from baas_cli.client import machine_mac
from baas_cli.errors import LocalError
from baas_cli.watch import FINISHED, outcome, watch

# --- Setups --------------------------------------------------------------------------

setup_app = typer.Typer(
    help="Setups: image versions pinned to a machine's disks.", no_args_is_help=True
)
SetupArg = Annotated[str, typer.Argument(help="The setup: its UUID or name")]
PIN_COLUMNS: list[output.Column] = [
    ("image", lambda p: p["image_name"]),
    ("version", lambda p: p["version"]),
    ("disk", lambda p: p["disk"]),
    ("sync", lambda p: p["sync"]),
    ("mount", lambda p: p["mount"]),
    ("partition", lambda p: p.get("partition") or None),
    ("uuid", lambda p: p["image"]),
]
PARTITION_COLUMNS: list[output.Column] = [
    ("number", lambda p: p["number"]),
    ("label", lambda p: p["label"]),
    ("size", lambda p: "rest of the disk" if p["size"] is None else output.size(p["size"])),
    ("type", lambda p: p["type"]),
    ("device", lambda p: p["device"]),
]


@setup_app.command("ls")
def setup_list(as_json: Json = False) -> None:
    """Your setups."""
    api = Session.api()
    found = list(api.pages(f"/api/user/{api.me()['username']}/image_setups"))
    columns: list[output.Column] = [
        ("name", lambda s: s["name"]),
        ("images", lambda s: ", ".join(f"{p['image_name']}@{p['version']}" for p in s["images"])),
        ("uuid", lambda s: s["uuid"]),
    ]
    output.show(found, as_json, lambda: output.table(found, columns))


@setup_app.command("show")
def setup_show(setup: SetupArg, as_json: Json = False) -> None:
    """One setup and its pinned versions."""
    data = Session.api().setup(setup)

    def render() -> None:
        output.fields(data, ["name", "uuid", "owner", "description", "created_at"])
        if data.get("layout"):
            title = f"partition table on {data['layout']['disk']}"
            output.table(data["layout"]["partitions"], PARTITION_COLUMNS, title=title)
        output.table(data["images"], PIN_COLUMNS, title="images")

    output.show(data, as_json, render)


@setup_app.command("create")
def setup_create(
    name: Annotated[str, typer.Argument(help="The new setup's name")],
    description: Annotated[str, typer.Option()] = "",
    as_json: Json = False,
) -> None:
    """Create an empty setup."""
    api = Session.api()
    created = api.post(
        f"/api/user/{api.me()['username']}/image_setup", {"name": name, "description": description}
    )
    output.done(f"Created the setup {created['name']} ({created['uuid']}).", created, as_json)


@setup_app.command("layout")
def setup_layout(
    setup: SetupArg,
    disk: Annotated[
        str | None, typer.Option(help="The whole disk the table is written to, e.g. /dev/sda")
    ] = None,
    part: Annotated[
        list[str] | None,
        typer.Option(
            help="LABEL:SIZE[:TYPE], in order (repeat it): SIZE like 512M or 8G, or 'rest' for "
            "the last one; TYPE linux (default), root-x86-64, home, swap, esp, bios or a GUID"
        ),
    ] = None,
    none: Annotated[bool, typer.Option("--none", help="Remove its partition table")] = False,
    as_json: Json = False,
) -> None:
    """Declare the setup's partition table (a GPT the agent writes), or remove it."""
    from baas_cli import partitions

    if none == bool(disk or part):
        raise LocalError("Give --disk with --part LABEL:SIZE[:TYPE]…, or --none.")
    if not none and not disk:
        raise LocalError("Give the disk the partition table goes on with --disk.")
    body = None if none else partitions.layout(disk or "", part or [])
    api = Session.api()
    found = api.setup(setup)
    changed = api.patch(f"/api/user/{found['owner']}/image_setup/{found['uuid']}", {"layout": body})
    if changed.get("layout") is None:
        message = f"The setup {changed['name']} has no partition table now."
    else:
        shown = ", ".join(
            f"{p['label']} {'the rest' if p['size'] is None else output.size(p['size'])}"
            for p in changed["layout"]["partitions"]
        )
        message = f"The setup {changed['name']} has a GPT on {changed['layout']['disk']}: {shown}."
    output.done(message, changed, as_json)


@setup_app.command("pin")
def setup_pin(
    setup: SetupArg,
    image: Annotated[str, typer.Argument(help="IMAGE@N (default: its latest version)")],
    sync: Annotated[bool, typer.Option(help="Bring the disk's data back before flashing")] = False,
    disk: Annotated[str | None, typer.Option(help="Another disk than the image's")] = None,
    mount: Annotated[str | None, typer.Option(help="flash, or network (user data)")] = None,
    partition: Annotated[
        str | None, typer.Option(help="Into this partition (label) of the setup's table")
    ] = None,
    as_json: Json = False,
) -> None:
    """Pin a version of an image to the setup."""
    from baas_cli.pull import latest_number

    api = Session.api()
    found_setup = api.setup(setup)
    found, number = api.image_version(image)
    number = latest_number(found) if number is None else number
    body: dict[str, Any] = {"image": found["uuid"], "version": number, "sync": sync}
    if disk:
        body["target_disk"] = disk
    if mount:
        body["mount"] = mount
    if partition:
        body["partition"] = partition
    pinned = api.post(
        f"/api/user/{found_setup['owner']}/image_setup/{found_setup['uuid']}/images", body
    )
    output.done(f"Pinned {found['name']}@{number} to {found_setup['name']}.", pinned, as_json)


@setup_app.command("unpin")
def setup_unpin(
    setup: SetupArg,
    image: Annotated[str, typer.Argument(help="The image to take out")],
    as_json: Json = False,
) -> None:
    """Take an image out of the setup."""
    api = Session.api()
    found_setup = api.setup(setup)
    found = api.image(image)
    api.delete(
        f"/api/user/{found_setup['owner']}/image_setup/{found_setup['uuid']}/images",
        {"image": found["uuid"]},
    )
    output.done(
        f"Took {found['name']} out of {found_setup['name']}.",
        {"setup": found_setup["uuid"], "removed": found["uuid"]},
        as_json,
    )


# --- Machines ----------------------------------------------------------------------------

machine_app = typer.Typer(help="Machines.", no_args_is_help=True)
MachineArg = Annotated[str, typer.Argument(help="The machine: its name or a MAC address")]
MACHINE_COLUMNS: list[output.Column] = [
    ("name", lambda m: m["name"]),
    ("state", lambda m: m["state"]),
    ("leased by", lambda m: m["lease"] and m["lease"]["user"]),
    ("until", lambda m: m["lease"] and output.when(m["lease"]["ends_at"])),
    ("arch", lambda m: m["architecture"]),
    ("disks", lambda m: ", ".join(f"{d['path']} {output.size(d['size'])}" for d in m["disks"])),
    ("mac", lambda m: ", ".join(m["mac_addresses"])),
]


@machine_app.command("ls")
def machine_list(
    state: Annotated[str | None, typer.Option(help="available, leased, …")] = None,
    as_json: Json = False,
) -> None:
    """The machines."""
    found = list(Session.api().pages("/api/machines", state=state))
    output.show(found, as_json, lambda: output.table(found, MACHINE_COLUMNS))


@machine_app.command("show")
def machine_show(machine: MachineArg, as_json: Json = False) -> None:
    """One machine: its disks, what they hold, its lease."""
    data = Session.api().machine(machine)
    output.show(data, as_json, lambda: output.fields(data))


# --- Leases ------------------------------------------------------------------------------


class _LeaseGroup(TyperGroup):
    """``baas lease MACHINE`` takes a lease; ``extend`` and ``release`` are subcommands."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["take", *args]
        return super().parse_args(ctx, args)


lease_app = typer.Typer(
    cls=_LeaseGroup,
    no_args_is_help=True,
    help="Lease a machine: baas lease MACHINE --hours N; "
    "baas lease extend MACHINE --hours N; baas lease release MACHINE.",
)
Hours = Annotated[int | None, typer.Option("--hours", help="How long (default: the server's)")]
LEASE_KEYS = ["machine", "user", "starts_at", "ends_at"]


def _lease(machine: str, hours: int | None, as_json: bool, verb: str) -> None:
    api = Session.api()
    found = api.machine(machine)
    lease = api.post(f"/api/machine/{machine_mac(found)}/lease", {"hours": hours})
    output.done(f"{verb} {found['name']} until {output.when(lease['ends_at'])}.", lease, as_json)


@lease_app.command("take", hidden=True)
def lease_take(machine: MachineArg, hours: Hours = None, as_json: Json = False) -> None:
    """Lease a machine (or extend the lease you hold)."""
    _lease(machine, hours, as_json, "Leased")


@lease_app.command("extend")
def lease_extend(machine: MachineArg, hours: Hours = None, as_json: Json = False) -> None:
    """Extend the lease you hold."""
    _lease(machine, hours, as_json, "Extended the lease of")


@lease_app.command("release")
def lease_release(machine: MachineArg, as_json: Json = False) -> None:
    """Release the machine: it is reset to its default setup and freed."""
    api = Session.api()
    found = api.machine(machine)
    api.delete(f"/api/machine/{machine_mac(found)}/lease")
    output.done(f"Released {found['name']}.", {"released": found["name"]}, as_json)


# --- Deployments -------------------------------------------------------------------------

deployment_app = typer.Typer(help="Deployments: list, follow, cancel.", no_args_is_help=True)
DEPLOYMENT_COLUMNS: list[output.Column] = [
    ("id", lambda d: d["id"]),
    ("machine", lambda d: d["machine"]),
    ("setup", lambda d: d["setup_name"]),
    ("state", lambda d: d["state"]),
    ("by", lambda d: d["requested_by"]),
    ("created", lambda d: output.when(d["created_at"])),
    ("failure", lambda d: d["failure_reason"] or None),
]


def _finish(api: Any, deployment_id: int, as_json: bool) -> None:
    """Follow a deployment to its end; the command ends with its outcome."""
    final = watch(api, deployment_id, console=output.errors, quiet=as_json)
    if as_json:
        output.emit_json(final)
    else:
        reason = f": {final['failure_reason']}" if final.get("failure_reason") else ""
        output.console.print(f"Deployment {deployment_id} {final['state']}{reason}.")
    set_exit(outcome(final))


def deploy(
    machine: MachineArg,
    setup: SetupArg,
    watch_: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow it to its end; exit 0 when done, 1 when it failed or was cancelled",
        ),
    ] = False,
    sync: Annotated[bool, typer.Option(help="Bring the machine's user data back first")] = False,
    as_json: Json = False,
) -> None:
    """Flash a setup onto a machine you lease."""
    api = Session.api()
    found = api.machine(machine)
    found_setup = api.setup(setup)
    created = api.post(
        f"/api/machine/{machine_mac(found)}/boot", {"setup": found_setup["uuid"], "sync": sync}
    )
    if not watch_:
        output.done(f"Deployment {created['id']} queued on {found['name']}.", created, as_json)
        return
    if not as_json:
        output.errors.print(f"Deployment {created['id']} queued on {found['name']}.")
    _finish(api, created["id"], as_json)


@deployment_app.command("ls")
def deployment_list(
    state: Annotated[str | None, typer.Option(help="queued, writing, done, …")] = None,
    machine: Annotated[str | None, typer.Option(help="A machine's MAC address")] = None,
    as_json: Json = False,
) -> None:
    """Deployments you may see."""
    found = list(Session.api().pages("/api/deployments", state=state, machine=machine))
    output.show(found, as_json, lambda: output.table(found, DEPLOYMENT_COLUMNS))


@deployment_app.command("show")
def deployment_show(deployment_id: int, as_json: Json = False) -> None:
    """One deployment: its images' progress and its events."""
    data = Session.api().get(f"/api/deployment/{deployment_id}")

    def render() -> None:
        output.fields(
            data,
            [
                "id",
                "machine",
                "setup_name",
                "state",
                "failure_reason",
                "requested_by",
                "created_at",
                "finished_at",
            ],
        )
        output.table(
            data["images"],
            [
                ("direction", lambda i: i["direction"]),
                ("image", lambda i: i["image"]),
                ("version", lambda i: i["version"]),
                ("disk", lambda i: i["disk"]),
                ("phase", lambda i: i["phase"]),
                (
                    "done",
                    lambda i: f"{output.size(i['bytes_done'])} / {output.size(i['bytes_total'])}",
                ),
            ],
            title="images",
        )
        output.table(
            data.get("events") or [],
            [
                ("when", lambda e: output.when(e["created_at"])),
                ("action", lambda e: e["action"]),
                ("state", lambda e: e["state"]),
                ("message", lambda e: e["message"]),
            ],
            title="events",
        )

    output.show(data, as_json, render)


@deployment_app.command("watch")
def deployment_watch(deployment_id: int, as_json: Json = False) -> None:
    """Follow a deployment to its end (exit 0 done, 1 failed or cancelled)."""
    api = Session.api()
    current = api.get(f"/api/deployment/{deployment_id}")
    if current["state"] in FINISHED and as_json:
        output.emit_json(current)
        set_exit(outcome(current))
        return
    _finish(api, deployment_id, as_json)


@deployment_app.command("cancel")
def deployment_cancel(deployment_id: int, as_json: Json = False) -> None:
    """Cancel an unfinished deployment."""
    api = Session.api()
    api.post(f"/api/deployment/{deployment_id}/cancel")
    data = api.get(f"/api/deployment/{deployment_id}")
    output.done(f"Deployment {deployment_id}: {data['state']}.", data, as_json)


# --- Tokens ------------------------------------------------------------------------------

token_app = typer.Typer(
    help="Your personal access tokens (needs a token with admin scope).", no_args_is_help=True
)
TOKEN_COLUMNS: list[output.Column] = [
    ("id", lambda t: t["id"]),
    ("name", lambda t: t["name"]),
    ("scopes", lambda t: ",".join(t["scopes"])),
    ("hint", lambda t: t["hint"]),
    ("created", lambda t: output.when(t["created"])),
    ("expires", lambda t: output.when(t["expires"]) if t["expires"] else "never"),
    ("last used", lambda t: output.when(t["last_used"])),
]


@token_app.command("ls")
def token_list(as_json: Json = False) -> None:
    """Your tokens."""
    api = Session.api()
    found = list(api.pages(f"/api/user/{api.me()['username']}/tokens"))
    output.show(found, as_json, lambda: output.table(found, TOKEN_COLUMNS))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What it is for")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="read, write, admin (repeat it; default read and write)"),
    ] = None,
    expires: Annotated[str | None, typer.Option(help="ISO 8601 date and time")] = None,
    as_json: Json = False,
) -> None:
    """Make a token (shown once)."""
    api = Session.api()
    body: dict[str, Any] = {"name": name, "expires": expires}
    if scope:
        body["scopes"] = scope
    created = api.post(f"/api/user/{api.me()['username']}/tokens", body)
    output.done(
        f"Token {created['name']} (id {created['id']}), shown only now:\n{created['token']}",
        created,
        as_json,
    )


@token_app.command("revoke")
def token_revoke(token_id: int, as_json: Json = False) -> None:
    """Revoke a token by its id (see baas token ls)."""
    api = Session.api()
    api.delete(f"/api/user/{api.me()['username']}/tokens/{token_id}")
    output.done(f"Revoked token {token_id}.", {"revoked": token_id}, as_json)
