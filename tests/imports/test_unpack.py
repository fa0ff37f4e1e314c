"""The layers are checked while umoci unpacks them into the job's private folder: what
that relies on (umoci writes nowhere else) and what a refused layer leaves (nothing)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from imports.models import State
from tests.imports.helpers import run_import
from tests.imports.oci import Entry, Layout, file


def hostile(outside: Path) -> list[Entry]:
    """A layer that tries every way out of its folder towards ``outside``; what the check
    refuses (the absolute path, then ``..``) comes after what umoci writes first."""
    return [
        Entry("link", kind=tarfile.SYMTYPE, linkname=str(outside)),
        file("link/through-a-symlink", "x"),
        Entry("up", kind=tarfile.SYMTYPE, linkname="../../../../../../../../" + str(outside)),
        file("up/through-a-relative-symlink", "x"),
        file(f"{outside}/absolute", "x"),
        Entry("dev/sda", kind=tarfile.BLKTYPE, mode=0o660),
        file("../../../../../../../../" + str(outside).lstrip("/") + "/escaping", "x"),
    ]


def test_umoci_writes_a_hostile_layer_inside_its_folder_only(tmp_path):
    """Without any check of ours: absolute paths, ``..`` and symlinks all land inside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    layout = Layout(tmp_path / "layout")
    layout.tag("bad", layout.image([hostile(outside)]))
    rootfs = tmp_path / "work" / "rootfs"
    rootfs.parent.mkdir()
    subprocess.run(
        ["umoci", "raw", "unpack", "--rootless", "--image", f"{layout.path}:bad", str(rootfs)],
        check=True,
        capture_output=True,
    )
    assert list(outside.iterdir()) == []
    inside = rootfs / str(outside).lstrip("/")
    names = {p.name for p in inside.iterdir()}
    assert names == {"through-a-symlink", "through-a-relative-symlink", "absolute", "escaping"}
    assert (rootfs / "dev" / "sda").is_file(), "a device node becomes an empty file"


def test_a_refused_layer_stops_the_unpack_and_leaves_nothing(
    tmp_path, registry, system_image, moderator, import_settings
):
    outside = tmp_path / "outside"
    outside.mkdir()
    layout = Layout(tmp_path / "layout")
    big = file("big", bytes(range(256)) * 64 * 1024)  # umoci has something to write first
    layout.tag("bad", layout.image([[big, *hostile(outside)]]))
    reference = registry.push(layout, "bad", "test/escape")
    job = run_import(moderator, system_image, oci=reference)
    assert job.state == State.FAILED
    assert job.reason.startswith(f"Layer 1 holds the absolute path '{outside}/absolute'")
    assert "Every layer passed" not in job.log
    assert list(outside.iterdir()) == []
    assert not system_image.versions.exists()
    assert not list(import_settings.glob("job-*")), "the job's folder, umoci's output with it"


def test_layers_that_pass_are_unpacked_and_counted(registry, system_image, moderator, images):
    job = run_import(moderator, system_image, oci=images["simple"])
    assert job.state == State.DONE, job.reason
    assert job.layers_done == job.layers_total == 2
    assert "Every layer passed the checks" in job.log


def test_a_cancel_while_the_layers_are_checked_and_unpacked_stops_both(
    registry, system_image, moderator, images, monkeypatch, import_settings
):
    import time

    from imports.models import ImportJob
    from imports.services import jobs, unpack

    job = jobs.import_create(
        actor=moderator, image=system_image, request=jobs.ImportRequest(oci=images["random"])
    )
    real = unpack.run_tool

    def slow_umoci(args, *, watch, **kw):
        ImportJob.objects.filter(pk=job.pk).update(cancel_requested=True)
        return real(["sleep", "30"], watch=watch, **kw)  # a long unpack: the cancel comes

    monkeypatch.setattr(unpack, "run_tool", slow_umoci)
    began = time.monotonic()
    jobs.import_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == State.CANCELLED, job.reason
    assert time.monotonic() - began < 15, "umoci was stopped, not waited for"
    assert not system_image.versions.exists()
    assert not list(import_settings.glob("job-*"))
