"""Container images from a registry become filesystem versions, with whiteouts applied."""

from __future__ import annotations

import pytest

from catalogue.models import Version
from imports.models import State
from tests.imports.helpers import ext4_cat, ext4_ls, ext4_stat, run_import, stored_path


@pytest.fixture
def imported(system_image, moderator, images):
    return run_import(moderator, system_image, oci=images["simple"], label="debroot")


def test_it_makes_a_labelled_ext4_version_with_whiteouts_applied(imported):
    assert imported.state == State.DONE, imported.log
    version = imported.version
    path = stored_path(version)
    assert ext4_cat(path, "/etc/hello") == "hello from a layer\n"
    assert ext4_cat(path, "/etc/new") == "added on top\n"
    etc = ext4_ls(path, "/etc")
    assert "gone" not in etc and "hello" in etc
    assert "a" not in ext4_ls(path, "/opt/old") and "b" in ext4_ls(path, "/opt/old")
    assert "debroot" in ext4_stat(path, "/").lower() or True
    import subprocess

    label = subprocess.run(["e2label", str(path)], capture_output=True, text=True).stdout
    assert label.strip() == "debroot"


def test_it_gives_files_the_owners_and_modes_of_their_layers(imported):
    path = stored_path(imported.version)
    shadowed = ext4_stat(path, "/shadowed")
    assert "User:  1000" in shadowed and "Group:    42" in shadowed
    assert "Mode:  04755" in ext4_stat(path, "/usr-bin-su")
    hello = ext4_stat(path, "/etc/hello")
    assert "User:     0" in hello and "Group:     0" in hello


def test_the_version_records_where_it_came_from(imported, images):
    version = Version.objects.get(pk=imported.version_id)
    assert version.source_reference == images["simple"]
    assert version.source_digest.startswith("sha256:") and len(version.source_digest) == 71
    assert version.source_digest == imported.manifest_digest
    assert version.source_platform == "linux/amd64"
    assert imported.layers_total == 2 and imported.layers_done == 2


def test_importing_the_same_manifest_again_answers_the_existing_version(
    imported, system_image, moderator, images
):
    again = run_import(moderator, system_image, oci=images["simple"], label="debroot")
    assert again.state == State.DONE
    assert again.version_id == imported.version_id
    assert system_image.versions.count() == 1
    assert "Already imported" in again.log


def test_a_multi_platform_image_gives_the_platform_asked_for(system_image, moderator, images):
    job = run_import(moderator, system_image, oci=images["multi"], platform="linux/arm64")
    assert job.state == State.DONE, job.log
    assert ext4_cat(stored_path(job.version), "/etc/arch") == "arm64"


def test_a_platform_the_image_lacks_is_refused_with_what_it_has(system_image, moderator, images):
    job = run_import(moderator, system_image, oci=images["multi"], platform="linux/riscv64")
    assert job.state == State.FAILED
    assert "no image for the platform linux/riscv64" in job.reason
    assert "linux/amd64, linux/arm64" in job.reason
    assert not system_image.versions.exists()


def test_a_single_platform_image_of_another_platform_is_refused(system_image, moderator, images):
    job = run_import(moderator, system_image, oci=images["simple"], platform="linux/arm64")
    assert job.state == State.FAILED
    assert "is an image for linux/amd64, not linux/arm64" in job.reason
