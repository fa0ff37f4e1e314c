"""The first-boot hook (contrib/firstboot/baas-init) run for real on real FAT and ext4 images.

A test cannot mount (no root, or no vfat in a container), so the filesystem's
files are copied out of the image with mtools or debugfs, as a mount would show
them, and the hook is pointed at them (``BAAS_INIT_DIR``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.catalogue.filesystems import ext4_image, fat_extract, fat_image, run, tool

HOOK = Path(__file__).resolve().parents[2] / "contrib" / "firstboot" / "baas-init"
SHELL = os.environ.get("BAAS_TEST_SHELL", "/bin/sh")  # POSIX sh: dash here, others elsewhere

PROGRAMS = {
    # FAT keeps no execute bits: the hook makes its copies executable.
    "run.d/10-set-parameter": b'#!/bin/sh\necho "set-parameter $BAAS_INIT_PROGRAM" >>"$RESULTS"\n',
    "run.d/20-experiment": b'#!/bin/sh\necho "experiment $(cat data/input.txt)" >>"$RESULTS"\n'
    b"echo measured 42\n",
    "run.d/30-broken": b'#!/bin/sh\necho broken >>"$RESULTS"\nexit 3\n',
    "run.d/40-after-the-broken-one": b'#!/bin/sh\necho after >>"$RESULTS"\n',
    "run.d/not a name": b'#!/bin/sh\necho "never" >>"$RESULTS"\n',
    "data/input.txt": b"input-7\n",
}


def extracted(kind: str, tmp_path: Path, files: dict[str, bytes], name: str = "fs") -> Path:
    """A BAASINIT filesystem image holding ``files``, and its files as a mount shows them."""
    image = tmp_path / f"{name}.img"
    into = tmp_path / name
    if kind == "fat":
        fat_extract(fat_image(image, files, label="BAASINIT"), into)
    else:
        ext4_image(image, files, label="BAASINIT")
        into.mkdir()
        run(tool("debugfs"), "-R", f"rdump / {into}", image)
    return into


def hook(directory: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SHELL, str(HOOK)],
        env={
            "PATH": os.environ["PATH"],
            "BAAS_INIT_DIR": str(directory),
            "BAAS_INIT_RUN": str(tmp_path / "run"),
            "RESULTS": str(tmp_path / "results"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # a program may kill its process group, as a reboot would
        check=False,
    )


def results(tmp_path: Path) -> list[str]:
    path = tmp_path / "results"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("kind", ["fat", "ext4"])
def test_the_programs_run_once_in_order(kind, tmp_path):
    fs = extracted(kind, tmp_path, PROGRAMS)
    first = hook(fs, tmp_path)
    assert first.returncode == 1, first.stderr  # one program failed
    expected = ["set-parameter 10-set-parameter", "experiment input-7", "broken", "after"]
    assert results(tmp_path) == expected
    assert "skipping not a name" in first.stderr
    assert "measured 42" in first.stderr  # on the console
    log = (fs / ".baas-init" / "log").read_text()
    assert "== 20-experiment" in log and "measured 42" in log
    ran = (fs / ".baas-init" / "ran").read_text().splitlines()
    assert [line.split()[:3] for line in ran if " exit " in line] == [
        ["10-set-parameter", "exit", "0"],
        ["20-experiment", "exit", "0"],
        ["30-broken", "exit", "3"],
        ["40-after-the-broken-one", "exit", "0"],
    ]
    # The next boot runs nothing again.
    second = hook(fs, tmp_path)
    assert second.returncode == 0, second.stderr
    assert results(tmp_path) == expected
    assert "10-set-parameter ran already" in second.stderr


def test_a_new_deployment_writes_the_image_afresh_and_the_programs_run_again(tmp_path):
    hook(extracted("fat", tmp_path, PROGRAMS, "first"), tmp_path)
    hook(extracted("fat", tmp_path, PROGRAMS, "second"), tmp_path)
    assert results(tmp_path).count("experiment input-7") == 2


def test_a_program_that_reboots_the_machine_is_not_run_again_and_the_next_ones_run(tmp_path):
    programs = {
        "run.d/10-set-parameter-and-reboot": b'#!/bin/sh\necho reboot >>"$RESULTS"\n'
        b"kill -KILL 0\n",  # the whole boot ends here, the hook with it
        "run.d/20-experiment": b'#!/bin/sh\necho experiment >>"$RESULTS"\n',
    }
    fs = extracted("fat", tmp_path, programs)
    first = hook(fs, tmp_path)
    assert first.returncode != 0
    assert results(tmp_path) == ["reboot"]
    second = hook(fs, tmp_path)
    assert second.returncode == 0, second.stderr
    assert results(tmp_path) == ["reboot", "experiment"]
    assert hook(fs, tmp_path).returncode == 0
    assert results(tmp_path) == ["reboot", "experiment"]


def test_nothing_runs_from_a_filesystem_that_cannot_record(tmp_path):
    fs = extracted("fat", tmp_path, PROGRAMS)
    (fs / ".baas-init").mkdir()
    (fs / ".baas-init" / "ran").mkdir()  # cannot be written as a file: like a read-only mount
    done = hook(fs, tmp_path)
    assert done.returncode == 1
    assert "running nothing" in done.stderr
    assert results(tmp_path) == []


def test_without_a_baasinit_filesystem_the_hook_does_nothing(tmp_path):
    label = "NOSUCH" + os.urandom(3).hex()
    done = hook(Path(""), tmp_path, BAAS_INIT_DIR="", BAAS_INIT_LABEL=label)
    assert done.returncode == 0, done.stderr
    assert f"no filesystem labelled {label}: nothing to do" in done.stderr
    assert results(tmp_path) == []
