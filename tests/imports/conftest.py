"""Fixtures of the import tests: test images in the local registry (``registry``, of
tests/imports/fixtures.py), settings that let imports reach it (127.0.0.1 is otherwise
refused), a work folder per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catalogue.models import ImageType
from tests.catalogue.factories import ImageFactory
from tests.imports.oci import Layout, directory, file


@pytest.fixture(scope="session")
def images(registry, tmp_path_factory) -> dict[str, str]:
    """References of the test images in the registry, by name."""
    layout = Layout(tmp_path_factory.mktemp("oci"))
    refs = {}
    base = [
        directory("etc"),
        file("etc/hello", "hello from a layer\n"),
        file("etc/gone", "removed by the next layer\n"),
        directory("opt"),
        directory("opt/old"),
        file("opt/old/a", "a"),
        directory("var"),
        directory("var/mail", uid=0, gid=8, mode=0o2775),
        file("usr-bin-su", "#!/bin/sh\n", mode=0o4755),
        file("shadowed", "x", uid=1000, gid=42),
    ]
    top = [
        file("etc/.wh.gone", ""),
        directory("opt/old"),
        file("opt/old/.wh..wh..opq", ""),
        file("opt/old/b", "b"),
        file("etc/new", "added on top\n"),
    ]
    one = layout.image([base, top])
    layout.tag("v1", one)
    refs["simple"] = registry.push(layout, "v1", "test/simple")
    arm = layout.image([[file("etc/arch", "arm64")]], arch="arm64")
    layout.tag("multi", layout.multi({"linux/amd64": one, "linux/arm64": arm}))
    refs["multi"] = registry.push(layout, "multi", "test/multi")
    bad = {
        "absolute": [file("/etc/passwd", "root::0:0::/:/bin/sh\n")],
        "escaping": [file("../../escaped", "out")],
        "hardlink": [Entry_link("etc/link", "../../etc/shadow")],
        "device": [Entry_dev("dev/sda")],
        "setuid": [file("bin/tool", "x", mode=0o4755, uid=1000)],
        "bomb": [file("zeros", bytes(48 * 1024 * 1024))],
        "random": [file("data", os.urandom(6 * 1024 * 1024))],
    }
    fake_boot = [
        directory("boot"),
        file("boot/vmlinuz-6.1.0-9-amd64", b"old kernel"),
        file("boot/vmlinuz-6.1.0-10-amd64", os.urandom(64 * 1024)),
        file("boot/initrd.img-6.1.0-10-amd64", os.urandom(32 * 1024)),
        directory("etc"),
        file("etc/marker", "a bootable root\n"),
    ]
    bad["kernel"] = fake_boot
    bad["kernel-no-initrd"] = [fake_boot[0], fake_boot[2], fake_boot[4], fake_boot[5]]
    for name, entries in bad.items():
        layout.tag(name, layout.image([entries]))
        refs[name] = registry.push(layout, name, f"test/{name}")
    return refs


def Entry_link(name: str, target: str):
    import tarfile

    from tests.imports.oci import Entry

    return Entry(name, kind=tarfile.LNKTYPE, linkname=target)


def Entry_dev(name: str):
    import tarfile

    from tests.imports.oci import Entry

    return Entry(name, kind=tarfile.BLKTYPE, mode=0o660)


@pytest.fixture(autouse=True)
def import_settings(settings, registry, tmp_path) -> Path:
    settings.BAAS_IMPORT_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.BAAS_IMPORT_INSECURE_REGISTRIES = [registry.host]
    settings.BAAS_IMPORT_WORK_DIR = tmp_path / "imports"
    return settings.BAAS_IMPORT_WORK_DIR


@pytest.fixture
def system_image(moderator):
    image = ImageFactory(owner=moderator, type=ImageType.SYSTEM, name="debian")
    image.maintainers.add(moderator)
    return image
