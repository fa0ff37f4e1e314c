"""The kernel: its vmlinuz, and the modules /init loads, with what they depend on.

:func:`install_kernel` copies the wanted modules (decompressed) and their
dependencies into the image, writes the order /init loads them in to
``/etc/baas/modules``, and returns the kernel release and its vmlinuz. A kernel
that cannot unpack a zstd initramfs, or lacks a module asked for beyond the
defaults, fails the build; modules built into the kernel are skipped.
"""

from __future__ import annotations

import lzma
import re
from collections.abc import Iterable
from pathlib import Path

import zstandard

from mgmt_os.files import write
from mgmt_os.host import BuildError

KERNEL_DEFAULT = "linux-image-cloud-amd64"


# Loaded by /init in dependency order (the build adds what they depend on).
# Modules built into the kernel, or absent from it, are skipped.
MODULES_DEFAULT = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "sd_mod")


def module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def module_depends(path: Path) -> list[str]:
    """``depends=`` and ``softdep=pre:`` of a module, from its .modinfo strings."""
    data = read_module(path)
    names: list[str] = []
    for match in re.finditer(rb"(?:^|\0)depends=([^\0]*)", data):
        names += [n for n in match.group(1).decode().split(",") if n]
    for match in re.finditer(rb"(?:^|\0)softdep=pre: ?([^\0]*?)(?: post:[^\0]*)?\0", data):
        names += match.group(1).decode().split()
    return [n.replace("-", "_") for n in names]


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> tuple[list[Path], list[str]]:
    """The module files for ``wanted`` and what they depend on, dependencies first;
    and the wanted names this kernel has neither as a module nor built in."""
    index = {module_name(p): p for p in moddir.rglob("*.ko*")}
    builtin_file = moddir / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        builtin = {module_name(Path(line)) for line in builtin_file.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin or name not in index:
            return
        seen.add(name)
        for dep in module_depends(index[name]):
            visit(dep)
        order.append(index[name])

    unknown = []
    for name in wanted:
        name = name.replace("-", "_")
        if name not in index and name not in builtin:
            unknown.append(name)
        visit(name)
    return order, unknown


def install_kernel(kernel_tree: Path, root: Path, modules: Iterable[str]) -> tuple[str, Path]:
    """Copy the wanted modules into ``root``; return the kernel release and its vmlinuz."""
    vmlinuz = sorted((kernel_tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise BuildError("the kernel package has no /boot/vmlinuz-*")
    release = vmlinuz[0].name.removeprefix("vmlinuz-")
    config = (kernel_tree / "boot" / f"config-{release}").read_text()
    if "CONFIG_RD_ZSTD=y" not in config:
        raise BuildError(f"kernel {release} cannot unpack a zstd initramfs (CONFIG_RD_ZSTD)")
    moddir = kernel_tree / "lib" / "modules" / release
    load = []
    order, unknown = resolve_modules(moddir, modules)
    unknown = [name for name in unknown if name not in MODULES_DEFAULT]
    if unknown:
        raise BuildError(f"kernel {release} has no module {', '.join(unknown)}")
    for module in order:
        relative = Path("lib/modules", release, module.relative_to(moddir))
        target = root / relative.with_name(module_name(module) + ".ko")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_module(module))
        load.append("/" + target.relative_to(root).as_posix())
    write(root / "etc/baas/modules", "".join(f"{path}\n" for path in load))
    return release, vmlinuz[0]
