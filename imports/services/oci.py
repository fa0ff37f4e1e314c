"""Container images: resolved with ``skopeo inspect``, pulled with ``skopeo copy`` into an OCI
layout, checked layer by layer (:mod:`.layers`) while ``umoci raw unpack --rootless``
unpacks them (whiteouts applied; :mod:`.unpack`), and made into an ext4 filesystem with
``mke2fs -d``.

Every step runs under the job's watch (:mod:`.tools`): a cancel, the deadline, or the
work folder passing the size limit stops the tool at once, so a too large image is
stopped while it is pulled or unpacked, not after.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from imports.exceptions import ImportInvalid, ImportRefused, ImportTooLarge
from imports.services import layers as layer_checks
from imports.services.network import check_host
from imports.services.tools import ToolFailed, Watch, run_tool, tree_size

MiB = 1024**2
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ARCHIVES = ("oci-archive", "docker-archive")
PLATFORM_RE = re.compile(r"^([a-z0-9]+)/([a-z0-9_]+)(?:/([a-z0-9]+))?\Z")
LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,16}\Z")


@dataclass(frozen=True)
class Reference:
    """A skopeo reference: ``docker://host/repo[:tag|@digest]``, or an uploaded archive."""

    text: str
    transport: str
    registry: str = ""
    repository: str = ""

    def target(self, archive: Path | None, digest: str = "") -> str:
        """What skopeo is given: the archive's path, or the repository pinned to ``digest``."""
        if self.transport in ARCHIVES:
            return f"{self.transport}:{archive}"
        if digest:
            return f"docker://{self.registry}/{self.repository}@{digest}"
        return self.text


def parse_reference(text: str) -> Reference:
    """ImportInvalid unless ``text`` is a registry reference or names an uploaded archive."""
    text = text.strip()
    for transport in ARCHIVES:
        if text.startswith(transport + ":"):
            if text != transport + ":":
                raise ImportInvalid(
                    f"{transport}: takes the archive you upload with the request (field "
                    "'archive'), never a path on the server: send exactly "
                    f"'{transport}:' and the file.",
                    "oci",
                )
            return Reference(text=text, transport=transport)
    if not text.startswith("docker://"):
        raise ImportInvalid(
            "The reference must start with docker:// (a registry), or be 'oci-archive:' or "
            "'docker-archive:' with the archive uploaded in the request.",
            "oci",
        )
    rest = text[len("docker://") :]
    name = rest.split("@", 1)[0]
    host, _, path = name.partition("/")
    if (
        not path
        or not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?\Z", host)
        or ("." not in host and (":" not in host and host != "localhost"))
    ):
        raise ImportInvalid(
            f"{text!r} names no registry: write docker://<registry>/<repository>:<tag>, "
            "e.g. docker://docker.io/library/debian:bookworm.",
            "oci",
        )
    if ":" in path.rsplit("/", 1)[-1]:
        path = path.rsplit(":", 1)[0]
    if not re.match(r"^[a-z0-9]+([._/-][a-z0-9]+|__[a-z0-9]+)*\Z", path):
        raise ImportInvalid(f"{path!r} is not a repository name.", "oci")
    return Reference(text=text, transport="docker", registry=host, repository=path)


@dataclass(frozen=True)
class Platform:
    os: str
    arch: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.arch, self.variant) if p)

    def flags(self) -> list[str]:
        flags = ["--override-os", self.os, "--override-arch", self.arch]
        return flags + (["--override-variant", self.variant] if self.variant else [])


def parse_platform(text: str) -> Platform:
    match = PLATFORM_RE.match(text or "")
    if not match:
        raise ImportInvalid(
            f"{text!r} is not a platform: write os/architecture, e.g. linux/amd64.", "platform"
        )
    return Platform(*(g or "" for g in match.groups()))


@dataclass
class Context:
    """What a pull needs from its job: where to work, how to report, when to stop."""

    work: Path
    log: Callable[[str], None]
    progress: Callable[..., None]
    watch: Callable[[Path | None, int, str], Watch]
    limit: int
    limit_why: str
    deadline: float  # time.monotonic() by which the whole job must end
    auth_file: Path | None = None
    archive: Path | None = None
    discard: Callable[[Path], None] = lambda path: shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Resolved:
    digest: str  # of the platform's manifest, as the registry serves it
    target: str  # what skopeo copies (pinned to the digest for a registry)
    layers: int
    compressed: int


class Skopeo:
    """skopeo with this job's registry settings: TLS, credentials, the deadline."""

    def __init__(self, reference: Reference, ctx: Context):
        self.reference, self.ctx = reference, ctx
        insecure = settings.BAAS_IMPORT_INSECURE_REGISTRIES
        self.insecure = bool(reference.registry) and (
            reference.registry in insecure or reference.registry.split(":")[0] in insecure
        )

    def _args(self, command: str, platform: Platform | None = None) -> list[str]:
        seconds = max(int(self.ctx.deadline - time.monotonic()), 1)
        args = ["skopeo", f"--command-timeout={seconds}s"]
        if platform is not None:
            args += platform.flags()
        args.append(command)
        prefix = "--src-" if command == "copy" else "--"
        if self.insecure:
            args.append(f"{prefix}tls-verify=false")
        if self.ctx.auth_file is not None:
            args += [f"{prefix}authfile", str(self.ctx.auth_file)]
        if command == "copy":
            args.append("--quiet")
        return args

    def run(self, args: list[str], watch: Watch | None = None) -> str:
        try:
            return run_tool(args, watch=watch or self.ctx.watch(None, 0, ""))
        except ToolFailed as exc:
            raise ImportRefused(self.explain(exc.output)) from exc

    def explain(self, output: str) -> str:
        text = output.strip().splitlines()[-1] if output.strip() else "no output"
        text = re.sub(r'^time="[^"]*" level=\w+ msg="?', "", text).rstrip('"')
        where = self.reference.text
        lower = text.lower()
        if "manifest unknown" in lower or "name unknown" in lower or "not found" in lower:
            why = f"The registry has no image {where} (unknown repository or tag)"
        elif "unauthorized" in lower or "denied" in lower or "authentication required" in lower:
            why = f"The registry refused to give {where} (credentials missing or wrong)"
        elif any(s in lower for s in ("connection refused", "no such host", "timeout", "eof")):
            why = f"The registry of {where} cannot be reached or broke off"
        else:
            why = f"skopeo could not read {where}"
        return f"{why}: {text[:500]}. Nothing was stored."

    def inspect_raw(self, target: str, *, config: bool = False) -> bytes:
        args = self._args("inspect") + ["--raw"] + (["--config"] if config else []) + [target]
        return self.run(args).encode()


def resolve(reference: Reference, platform: Platform, ctx: Context) -> Resolved:
    """The digest of ``platform``'s manifest, and what to copy; refuses what cannot fit."""
    if reference.transport == "docker":
        host, _, port = reference.registry.partition(":")
        check_host("registry-1.docker.io" if host == "docker.io" else host, int(port or 443))
    skopeo = Skopeo(reference, ctx)
    target = reference.target(ctx.archive)
    raw = skopeo.inspect_raw(target)
    manifest = _json(raw, "manifest")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
        digest = _pick(manifest, platform, reference)
        pinned = reference.target(ctx.archive, digest if reference.transport == "docker" else "")
        raw = skopeo.inspect_raw(pinned) if reference.transport == "docker" else raw
        manifest = _json(raw, "manifest") if reference.transport == "docker" else {}
    if reference.transport == "docker":
        target = reference.target(None, digest)
    if manifest.get("layers") is not None:
        config = _json(skopeo.inspect_raw(target, config=True), "configuration")
        found = Platform(config.get("os", ""), config.get("architecture", ""))
        if (found.os, found.arch) != (platform.os, platform.arch):
            raise ImportRefused(
                f"{reference.text} is an image for {found}, not {platform}: ask for "
                f"platform {found!s} or pick another image. Nothing was stored."
            )
    sizes = [int(layer.get("size", 0)) for layer in manifest.get("layers", [])]
    if sum(sizes) > ctx.limit:
        raise ImportTooLarge(
            f"The layers of {reference.text} are {sum(sizes)} bytes compressed, more than "
            f"{ctx.limit} bytes ({ctx.limit_why}). Nothing was pulled or stored."
        )
    return Resolved(digest=digest, target=target, layers=len(sizes), compressed=sum(sizes))


def _json(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImportRefused(f"The image's {what} is not JSON. Nothing was stored.") from exc
    if not isinstance(value, dict):
        raise ImportRefused(f"The image's {what} is not a JSON object. Nothing was stored.")
    return value


def _pick(index: dict, platform: Platform, reference: Reference) -> str:
    offered = []
    for entry in index.get("manifests", []):
        p = entry.get("platform") or {}
        found = Platform(p.get("os", ""), p.get("architecture", ""), p.get("variant", ""))
        offered.append(str(found))
        if (found.os, found.arch) == (platform.os, platform.arch) and (
            not platform.variant or platform.variant == found.variant
        ):
            return str(entry["digest"])
    listed = ", ".join(sorted(set(offered) - {""})) or "none"
    raise ImportRefused(
        f"{reference.text} has no image for the platform {platform}; it has: {listed}. "
        "Nothing was stored."
    )


def pull(reference: Reference, resolved: Resolved, platform: Platform, ctx: Context) -> Path:
    """``skopeo copy`` into an OCI layout under the work folder, stopped past the limit."""
    layout = ctx.work / "layout"
    skopeo = Skopeo(reference, ctx)
    args = [*skopeo._args("copy", platform), resolved.target, f"oci:{layout}:image"]
    ctx.log(f"Pulling {resolved.layers} layers ({resolved.compressed} bytes compressed).")
    skopeo.run(args, watch=ctx.watch(layout, ctx.limit, "pulled"))
    return layout


def layout_layers(layout: Path) -> tuple[str, list[tuple[Path, str]]]:
    """The layout's manifest digest and its layers (blob path, media type), bottom first."""
    index = _json((layout / "index.json").read_bytes(), "OCI index")
    descriptor = index["manifests"][0]
    manifest = _json(_blob(layout, descriptor["digest"]).read_bytes(), "manifest")
    layers = [(_blob(layout, layer["digest"]), layer["mediaType"]) for layer in manifest["layers"]]
    return str(descriptor["digest"]), layers


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ImportRefused(f"The image names a blob {digest!r} BAAS cannot read.")
    return layout / "blobs" / "sha256" / value


def fitted_size(rootfs: Path) -> int:
    """A filesystem size that holds ``rootfs`` with room for ext4's own structures."""
    used, inodes = 0, 0
    for _dirpath, dirnames, filenames in os.walk(rootfs):
        inodes += len(dirnames) + len(filenames)
    used = tree_size(rootfs)
    size = int(used * 1.2) + inodes * 512 + 16 * MiB
    return max(math.ceil(size / MiB) * MiB, 32 * MiB)


def make_filesystem(
    rootfs: Path, tree: layer_checks.Tree, *, path: Path, size: int, label: str, ctx: Context
) -> None:
    """``mke2fs -t ext4 -d``: a sparse ext4 image of ``rootfs`` labelled ``label``, owners
    set as the layers say (a rootless unpack could not)."""
    with open(path, "wb") as f:
        f.truncate(size)
    args = ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(rootfs), "-L", label]
    args += ["-E", "root_owner=0:0"]
    args += [str(path), f"{size // 1024}k"]
    try:
        run_tool(args, watch=ctx.watch(None, 0, ""))
    except ToolFailed as exc:
        if "space" in exc.output.lower() or "allocate" in exc.output.lower():
            raise ImportTooLarge(
                f"The files do not fit in a filesystem of {size} bytes: ask for a larger "
                "'size', or leave it out to have it fitted. Nothing was stored."
            ) from exc
        raise ImportRefused(f"mke2fs failed: {exc.output.strip()[-500:]}") from exc
    set_owners(rootfs, tree, path=path, ctx=ctx)


def set_owners(rootfs: Path, tree: layer_checks.Tree, *, path: Path, ctx: Context) -> None:
    """Give each file the owner its layer gave it, where the unpack could not (debugfs)."""
    commands = []
    for name, (uid, gid) in tree.owners.items():
        try:
            st = os.lstat(rootfs / name)
        except FileNotFoundError:
            continue
        if (st.st_uid, st.st_gid) == (uid, gid):
            continue
        if '"' in name or "\n" in name:
            raise ImportRefused(f"The image holds the file name {name!r}, which BAAS cannot own.")
        commands.append(f'sif "/{name}" uid {uid}\nsif "/{name}" gid {gid}\n')
    if not commands:
        return
    script = ctx.work / "owners.debugfs"
    script.write_text("".join(commands))
    run_tool(["debugfs", "-w", "-f", script, path], watch=ctx.watch(None, 0, ""))
    ctx.log(f"Set the owners of {len(commands)} files as the layers give them.")


def check_label(label: str) -> str:
    if not LABEL_RE.match(label):
        raise ImportInvalid(
            f"{label!r} is not a filesystem label: 1 to 16 letters, digits, '.', '_' or '-'.",
            "label",
        )
    return label
