"""A real NBD client for the network mount tests (qemu-img and qemu-io), and test images."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from pathlib import Path

MiB = 1 << 20


def content(seed: int, size: int = 3 * MiB) -> bytes:
    """Blocks of data between runs of zeros, like a real disk."""
    block = hashlib.sha256(str(seed).encode()).digest() * (64 * 1024 // 32)
    return b"".join(block if i % 3 else bytes(len(block)) for i in range(size // len(block)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nbd_read(url: str, tmp_path: Path) -> bytes:
    """The export's bytes, as a client sees them."""
    out = tmp_path / f"read-{uuid.uuid4().hex}.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)], check=True)
    data = out.read_bytes()
    out.unlink()
    return data


def nbd_write(url: str, pattern: int, offset: int, length: int) -> None:
    command = f"write -P {pattern:#x} {offset} {length}"
    result = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", command, url], capture_output=True, text=True, check=True
    )
    assert "wrote" in result.stdout, result.stdout + result.stderr


def nbd_reachable(url: str) -> bool:
    result = subprocess.run(
        ["qemu-img", "info", "-f", "raw", url], capture_output=True, text=True, timeout=30
    )
    return result.returncode == 0


def nbd_read_tls(url: str, identity: str, psk: str, tmp_path: Path) -> bytes:
    """The export's bytes through TLS with a pre-shared key, as a client that has it sees them."""
    keys = tmp_path / f"psk-{uuid.uuid4().hex}"
    keys.mkdir()
    (keys / "keys.psk").write_text(f"{identity}:{psk}\n")
    host_port, export = url.removeprefix("nbd://").split("/", 1)
    host, port = host_port.rsplit(":", 1)
    out = keys / "read.raw"
    subprocess.run(
        [
            *("qemu-img", "convert", "-O", "raw"),
            f"--object=tls-creds-psk,id=tls0,endpoint=client,dir={keys},username={identity}",
            "--image-opts",
            f"driver=nbd,host={host},port={port},export={export},tls-creds=tls0",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()
