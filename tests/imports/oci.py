"""Container images made in the test, pushed to a local registry (Debian's docker-registry).

Layers are tar files written with Python's ``tarfile`` (so a test can put in
exactly what a hostile image would: absolute paths, ``..``, device nodes,
set-user-ID files, whiteouts); the OCI layout around them is a few JSON
files; ``skopeo copy`` pushes it. Nothing reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Entry:
    """One tar member: a file (``data``), a directory, a symlink, a hard link, a device."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""


def file(name: str, data: bytes | str, **kw) -> Entry:
    return Entry(name, data.encode() if isinstance(data, str) else data, **kw)


def directory(name: str, **kw) -> Entry:
    return Entry(name, kind=tarfile.DIRTYPE, mode=kw.pop("mode", 0o755), **kw)


def layer_tar(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.uid, info.gid = e.kind, e.mode, e.uid, e.gid
            info.linkname, info.mtime = e.linkname, 1_700_000_000
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return out.getvalue()


@dataclass
class Layout:
    """An OCI layout on disk, written blob by blob."""

    path: Path

    def __post_init__(self) -> None:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def image(self, layers: list[list[Entry]], *, arch: str = "amd64", os_: str = "linux") -> dict:
        """A manifest of these layers for os/arch; its descriptor."""
        descriptors, diff_ids = [], []
        for entries in layers:
            tar = layer_tar(entries)
            diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
            descriptors.append(self.blob(gzip.compress(tar, mtime=0), LAYER_GZIP))
        config = {
            "architecture": arch,
            "os": os_,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.blob(
                json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
            ),
            "layers": descriptors,
        }
        return self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)

    def tag(self, name: str, descriptor: dict) -> None:
        index_path = self.path / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {
            "schemaVersion": 2, "manifests": []
        }  # fmt: skip
        entry = dict(descriptor, annotations={"org.opencontainers.image.ref.name": name})
        index["manifests"] = [
            m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != name
        ] + [entry]  # fmt: skip
        index_path.write_text(json.dumps(index))

    def multi(self, platforms: dict[str, dict]) -> dict:
        """An index of manifests by platform ("linux/amd64": descriptor)."""
        manifests = []
        for platform, descriptor in platforms.items():
            os_, arch = platform.split("/")
            manifests.append(dict(descriptor, platform={"os": os_, "architecture": arch}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(json.dumps(index).encode(), OCI_INDEX)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    """Debian's docker-registry on 127.0.0.1, storing under a temporary folder."""

    root: Path
    port: int = field(default_factory=free_port)
    htpasswd: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is missing: ./dev installs it (Debian docker-registry)")
        config = self.root / "config.yml"
        auth = ""
        if self.htpasswd is not None:
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {self.htpasswd}\n"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {self.host}\n{auth}"
        )
        with open(self.root / "registry.log", "wb") as log:
            self.process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail("docker-registry did not start: " + (self.root / "registry.log").read_text())

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def push(self, layout: Layout, tag: str, repository: str, *, creds: str = "") -> str:
        """Push ``layout``'s ``tag`` as ``repository:tag``; the docker:// reference."""
        reference = f"docker://{self.host}/{repository}:{tag}"
        args = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if creds:
            args += ["--dest-creds", creds]
        subprocess.run(
            [*args, "--all", f"oci:{layout.path}:{tag}", reference],
            check=True,
            capture_output=True,
            env={**os.environ, "HOME": str(self.root)},
        )
        return reference
