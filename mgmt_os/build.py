"""Build the BAAS management OS: a Debian kernel and an initramfs running ``baas-agent``.

    .venv/bin/python -m mgmt_os.build [--out var/mgmt-os] [--cache var/cache/mgmt-os]

Everything comes from Debian packages fetched with ``apt-get download`` (the host's
apt sources; no root needed): the kernel (``linux-image-cloud-amd64`` by default),
``busybox-static`` for the userland, Python 3.11 and the shared libraries it
needs, ``python3-zstandard`` (the agent decompresses ranges on every core),
``zstd`` for its decompression fallback, and the CA certificates. The agent is this
repository's ``agent/baas_agent`` and ``diskimage``, copied as they are at build time,
with ``blake3``, which Debian 12 lacks, from the build's own Python (``mgmt_os/wheels.py``).

Writes ``vmlinuz``, ``initrd.img`` (a zstd-compressed newc cpio, byte for byte the
same for the same inputs) and ``manifest.json`` to the output directory, and
does nothing when the inputs (package versions, /init, the agent's sources, the
build's own modules) have not changed since the last build. No Django here.

This module is the command line and the order of the steps; each step is a module
of its own: :mod:`mgmt_os.inputs` (the cache key), :mod:`mgmt_os.debs` (the Debian
packages), :mod:`mgmt_os.kernel` (the kernel and its modules), :mod:`mgmt_os.rootfs`
(the root filesystem), :mod:`mgmt_os.agent` and :mod:`mgmt_os.wheels` (the agent),
:mod:`mgmt_os.check` (the image's Python run on the host), :mod:`mgmt_os.initramfs`
(the archive).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mgmt_os import wheels
from mgmt_os.agent import AGENT_WHEELS, install_agent
from mgmt_os.check import check_and_compile
from mgmt_os.debs import PACKAGES, download, extract
from mgmt_os.files import sha256_file
from mgmt_os.host import BuildError, log
from mgmt_os.initramfs import ZSTD_LEVEL, write_initrd
from mgmt_os.inputs import FORMAT, Inputs, gather_inputs, up_to_date
from mgmt_os.kernel import KERNEL_DEFAULT, MODULES_DEFAULT, install_kernel
from mgmt_os.rootfs import install_base, install_busybox, install_certificates, prune

REPO = Path(__file__).resolve().parent.parent


def assemble(inputs: Inputs, debs: dict[str, Path], agent_dir: Path, work: Path) -> dict:
    kernel_tree, root = work / "kernel", work / "root"
    extract(debs[inputs.kernel_package], kernel_tree)
    for name in PACKAGES:
        extract(debs[name], root)
    install_certificates(root)
    prune(root)
    release, vmlinuz = install_kernel(kernel_tree, root, inputs.modules)
    install_busybox(root)
    agent_version, entry = install_agent(agent_dir, root)
    wheels.install(AGENT_WHEELS, root / "usr/lib/python3/dist-packages")
    install_base(root, f"BAAS management OS (agent {agent_version}, {inputs.key()[:12]})")
    accelerators = check_and_compile(root, entry, work)
    modules = (root / "etc/baas/modules").read_text().split()
    return {
        "release": release,
        "vmlinuz": vmlinuz,
        "root": root,
        "agent": {"version": agent_version, "entry_point": entry, "accelerators": accelerators},
        "modules": [Path(m).name.removesuffix(".ko") for m in modules],
    }


def build(
    out: Path,
    cache: Path,
    kernel: str = KERNEL_DEFAULT,
    modules: tuple[str, ...] = MODULES_DEFAULT,
    agent_dir: Path = REPO / "agent",
    force: bool = False,
) -> dict:
    """Build (or find up to date) the management OS in ``out``; return its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o022)  # modes of the directories made here go into the image
    try:
        return _build(out, cache, kernel, modules, agent_dir, force)
    finally:
        os.umask(umask)


def _build(
    out: Path, cache: Path, kernel: str, modules: tuple[str, ...], agent_dir: Path, force: bool
) -> dict:
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        inputs = gather_inputs(kernel, modules, agent_dir)
        key = inputs.key()
        manifest = None if force else up_to_date(out, key)
        if manifest is not None:
            log(f"up to date in {out} (kernel {manifest['kernel']['release']})")
            return manifest
        debs = download(inputs.packages, cache / "debs")
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
        with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
            work = Path(tmp)
            log(f"assembling the image in {work}")
            parts = assemble(inputs, debs, agent_dir, work)
            log(f"packing and compressing the initramfs (zstd -{ZSTD_LEVEL})")
            write_initrd(parts["root"], work / "initrd.img", mtime)
            shutil.copyfile(parts["vmlinuz"], work / "vmlinuz")
            files = {}
            for name in ("vmlinuz", "initrd.img"):
                files[name] = {
                    "sha256": sha256_file(work / name),
                    "size": (work / name).stat().st_size,
                }
            manifest = {
                "format": FORMAT,
                "cache_key": key,
                "kernel": {
                    "package": inputs.kernel_package,
                    "version": inputs.packages[inputs.kernel_package],
                    "release": parts["release"],
                },
                "packages": inputs.packages,
                "modules": parts["modules"],
                "agent": {**parts["agent"], "sources_sha256": inputs.agent_sha256},
                "init_sha256": inputs.init_sha256,
                "files": files,
            }
            for name in files:
                os.replace(work / name, out / name)
        (out / "manifest.tmp").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(out / "manifest.tmp", out / "manifest.json")
        log(f"built in {out}: kernel {parts['release']}, initrd {files['initrd.img']['size']} B")
        return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mgmt_os.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=REPO / "var/mgmt-os", help="output directory")
    parser.add_argument(
        "--cache", type=Path, default=REPO / "var/cache/mgmt-os", help="downloaded packages"
    )
    parser.add_argument("--kernel", default=KERNEL_DEFAULT, help="kernel package (or meta package)")
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="also load this kernel module (repeatable), "
        "e.g. nvme or e1000e with --kernel linux-image-amd64",
    )
    parser.add_argument(
        "--agent", type=Path, default=REPO / "agent", help="the agent's project dir"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        manifest = build(
            out=args.out,
            cache=args.cache,
            kernel=args.kernel,
            modules=(*MODULES_DEFAULT, *args.module),
            agent_dir=args.agent,
            force=args.force,
        )
    except BuildError as error:
        log(f"error: {error}")
        return 1
    for name in manifest["files"]:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
