"""``baas image …``: the catalogue, and moving versions' bytes both ways."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from baas_cli import output
from baas_cli.app import Json, Session
from baas_cli.errors import LocalError

app = typer.Typer(help="Images and their versions: list, create, push, pull.", no_args_is_help=True)

ImageArg = Annotated[str, typer.Argument(help="The image: its UUID, name, or owner/name")]


def _latest(image: dict[str, Any]) -> dict[str, Any] | None:
    versions = image.get("versions") or []
    return max(versions, key=lambda v: v["number"]) if versions else None


IMAGE_COLUMNS: list[output.Column] = [
    ("name", lambda i: i["name"]),
    ("owner", lambda i: i["owner"]),
    ("type", lambda i: i["type"]),
    ("latest", lambda i: (v := _latest(i)) and v["number"]),
    ("size", lambda i: (v := _latest(i)) and output.size(v["size"])),
    ("stored", lambda i: output.size(i.get("storage_used"))),
    ("compression", lambda i: i["compression"]),
    ("uuid", lambda i: i["uuid"]),
]
VERSION_COLUMNS: list[output.Column] = [
    ("number", lambda v: v["number"]),
    ("size", lambda v: output.size(v["size"])),
    ("stored", lambda v: output.size(v["stored_size"])),
    ("compression", lambda v: v["compression"]),
    ("sha256", lambda v: (v["sha256"] or "(computing)")[:16]),
    ("by", lambda v: v["uploaded_by"]),
    ("created", lambda v: output.when(v["created_at"])),
    ("note", lambda v: ("DAMAGED " if v.get("damaged") else "") + (v.get("note") or "")),
]


@app.command("ls")
def list_images(
    mine: Annotated[bool, typer.Option("--mine", help="Only your own images")] = False,
    type_: Annotated[
        str | None, typer.Option("--type", help="single, system, user_data, …")
    ] = None,
    search: Annotated[str | None, typer.Option(help="Only names containing this")] = None,
    as_json: Json = False,
) -> None:
    """The images you may read."""
    api = Session.api()
    owner = api.me()["username"] if mine else None
    found = list(api.pages("/api/images", type=type_, search=search, owner=owner))
    output.show(found, as_json, lambda: output.table(found, IMAGE_COLUMNS))


@app.command()
def show(image: ImageArg, as_json: Json = False) -> None:
    """One image, with its versions."""
    data = Session.api().image(image)

    def render() -> None:
        output.fields(
            data,
            [
                "name",
                "uuid",
                "owner",
                "type",
                "description",
                "file_standard",
                "compression",
                "target_disk",
                "transfer_protocol",
                "keep_versions",
                "storage_used",
                "expires_at",
                "created_at",
                "updated_at",
            ],
        )
        output.table(data.get("versions") or [], VERSION_COLUMNS, title="versions")

    output.show(data, as_json, render)


@app.command()
def versions(image: ImageArg, as_json: Json = False) -> None:
    """An image's versions."""
    api = Session.api()
    found = list(api.pages(f"/api/image/{api.image(image)['uuid']}/versions"))
    output.show(found, as_json, lambda: output.table(found, VERSION_COLUMNS))


def _changes(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="The new image's name")],
    type_: Annotated[str, typer.Option("--type", help="single, system, user_data, …")] = "single",
    compression: Annotated[
        str, typer.Option(help="How versions are stored: none, zstd, gzip")
    ] = "none",
    file_standard: Annotated[str, typer.Option(help="raw or qcow2")] = "raw",
    target_disk: Annotated[str | None, typer.Option(help="e.g. /dev/sda")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    keep_versions: Annotated[int | None, typer.Option(help="Versions to keep")] = None,
    owner: Annotated[str | None, typer.Option(help="Whose (administrators)")] = None,
    as_json: Json = False,
) -> None:
    """Create an image: its version 0 is an empty disk."""
    api = Session.api()
    body = _changes(
        name=name,
        type=type_,
        compression=compression,
        file_standard=file_standard,
        target_disk=target_disk,
        description=description,
        keep_versions=keep_versions,
    )
    created = api.post(f"/api/user/{owner or api.me()['username']}/image", body)
    output.done(f"Created {created['name']} ({created['uuid']}).", created, as_json)


@app.command()
def edit(
    image: ImageArg,
    name: Annotated[str | None, typer.Option(help="A new name")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    type_: Annotated[str | None, typer.Option("--type")] = None,
    compression: Annotated[str | None, typer.Option()] = None,
    target_disk: Annotated[str | None, typer.Option()] = None,
    keep_versions: Annotated[int | None, typer.Option()] = None,
    as_json: Json = False,
) -> None:
    """Change an image's metadata."""
    api = Session.api()
    body = _changes(
        name=name,
        description=description,
        type=type_,
        compression=compression,
        target_disk=target_disk,
        keep_versions=keep_versions,
    )
    if not body:
        raise LocalError("Nothing to change: give at least one option (see --help).")
    changed = api.patch(f"/api/image/{api.image(image)['uuid']}", body)
    output.done(f"Changed {changed['name']} ({changed['uuid']}).", changed, as_json)


@app.command("rm")
def remove(
    image: ImageArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
    as_json: Json = False,
) -> None:
    """Delete an image and every version of it."""
    api = Session.api()
    found = api.image(image)
    if not yes:
        if not sys.stdin.isatty():
            raise LocalError("Deleting needs --yes when there is no terminal to ask.")
        typer.confirm(f"Delete {found['name']} ({found['uuid']}) and all its versions?", abort=True)
    api.delete(f"/api/image/{found['uuid']}")
    output.done(f"Deleted {found['name']}.", {"deleted": found["uuid"]}, as_json)


@app.command()
def push(
    image: ImageArg,
    file: Annotated[Path, typer.Argument(help="The raw disk image file")],
    note: Annotated[str, typer.Option(help="A note on the version")] = "",
    digest: Annotated[
        bool,
        typer.Option(help="Send the SHA-256 (one read first): checked before anything is stored"),
    ] = False,
    compress: Annotated[
        str, typer.Option(help="auto (when faster on the link), zstd, none")
    ] = "auto",
    limit_rate: Annotated[str, typer.Option(help="At most this many bytes/s, e.g. 50M")] = "0",
    restart: Annotated[bool, typer.Option(help="Do not resume an earlier attempt")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Send it as a resumable upload (--no-resume: one request, which the server "
            "stores without a second pass)"
        ),
    ] = True,
    as_json: Json = False,
) -> None:
    """Upload FILE as the image's next version: only its data, resumable."""
    from baas_cli.quick import push_file

    push_file(
        image=image,
        file=file,
        note=note,
        digest=digest,
        compress=compress,
        limit_rate=limit_rate,
        restart=restart,
        resume=resume,
        as_json=as_json,
        profile=Session.profile_name,
    )


@app.command()
def pull(
    image: Annotated[str, typer.Argument(help="IMAGE or IMAGE@N (default: the latest)")],
    file: Annotated[Path, typer.Argument(help="Where to write the disk (a sparse file)")],
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="The whole raw disk, as the server sends it (zero blocks still left as holes)",
        ),
    ] = False,
    zst: Annotated[bool, typer.Option("--zst", help="The stored .zst file itself")] = False,
    limit_rate: Annotated[str, typer.Option(help="At most this many bytes/s, e.g. 50M")] = "0",
    as_json: Json = False,
) -> None:
    """Download a version as a sparse file: only its data is moved, each range checked."""
    from baas_cli.progress import Transfer
    from baas_cli.pull import Pull, latest_number, pull_stored
    from baas_cli.quick import parse_rate

    if raw and zst:
        raise LocalError("Choose --raw or --zst, not both.")
    api = Session.api()
    found, number = api.image_version(image)
    number = latest_number(found) if number is None else number
    with Transfer(f"pull {found['name']} v{number}", quiet=as_json) as transfer:
        report = transfer.pull_report()
        if raw or zst:
            result = pull_stored(api, found, number, file, raw=raw, report=report)
        else:
            puller = Pull(api, found, number, file, report)
            puller.limit_rate = parse_rate(limit_rate)
            result = puller.run()
    output.done(
        f"{file}: {found['name']} version {number} ({output.size(result['size'])}, "
        f"{output.size(result['received'])} received).",
        result,
        as_json,
    )
