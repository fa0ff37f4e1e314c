"""A setup's partition table on a disk: written when missing, kept when there, images in it.

On a file disk (the table, its reading, the refusals) and on a loop device
with partition scanning (the whole agent: the table, an image written into a
partition, user data read back from another, the table kept the second time).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from baas_agent import layout
from baas_agent.cli import main
from baas_agent.disks import DiskMap

from diskimage import gpt
from tests.agent.conftest import MiB, make_image
from tests.agent.test_cli import MAC, USER_DATA
from tests.agent.test_flash import IMAGE, store
from tests.diskimage.loopdev import loop_device

HOME = gpt.TYPES["home"]
LINUX = gpt.TYPES["linux"]


def instruction(root=20 * MiB, rest=True, disk="/dev/sda"):
    partitions = [
        {"number": 1, "label": "root", "size": root, "type": LINUX},
        {"number": 2, "label": "home", "size": None if rest else 8 * MiB, "type": HOME},
    ]
    return {"disk": disk, "partitions": partitions}


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "sda.img"
    with path.open("wb") as file:
        file.truncate(48 * MiB)
    return path


def test_a_disk_without_the_table_gets_it_and_reports_it(disk):
    (table,) = layout.parse([instruction()])

    report = layout.apply(table, DiskMap({"/dev/sda": str(disk)}))

    assert report["created"] is True and report["size"] == 48 * MiB
    assert [(p["label"], p["start"], p["size"]) for p in report["partitions"]] == [
        ("root", MiB, 20 * MiB),
        ("home", 21 * MiB, 48 * MiB - 21 * MiB - MiB),  # up to the last MiB before the backup
    ]
    fd = os.open(disk, os.O_RDONLY)
    try:
        assert [(p.label, p.type) for p in gpt.read(fd)] == [("root", LINUX), ("home", HOME)]
    finally:
        os.close(fd)


def test_a_disk_with_the_table_keeps_it_and_what_its_partitions_hold(disk):
    disks = DiskMap({"/dev/sda": str(disk)})
    (table,) = layout.parse([instruction()])
    layout.apply(table, disks)
    user_data = os.urandom(MiB)
    with disk.open("r+b") as file:
        file.seek(21 * MiB)  # the start of home: what a new table would wipe
        file.write(user_data)

    report = layout.apply(table, disks)

    assert report["created"] is False
    with disk.open("rb") as file:
        file.seek(21 * MiB)
        assert file.read(MiB) == user_data


def test_another_table_is_replaced_and_old_filesystems_lose_their_start(disk):
    disks = DiskMap({"/dev/sda": str(disk)})
    (first,) = layout.parse([instruction(root=20 * MiB)])
    layout.apply(first, disks)
    with disk.open("r+b") as file:
        file.seek(11 * MiB)  # will be the start of home under the new table
        file.write(b"\xff" * MiB)

    (second,) = layout.parse([instruction(root=10 * MiB)])
    report = layout.apply(second, disks)

    assert report["created"] is True
    assert report["partitions"][1]["start"] == 11 * MiB
    with disk.open("rb") as file:
        file.seek(11 * MiB)
        assert file.read(MiB) == bytes(MiB)


def test_a_table_that_does_not_fit_the_disk_is_refused_with_the_numbers(disk):
    (table,) = layout.parse([instruction(root=60 * MiB)])
    with pytest.raises(layout.LayoutFailed) as failed:
        layout.apply(table, DiskMap({"/dev/sda": str(disk)}))
    assert f"the disk has {48 * MiB} bytes" in str(failed.value)
    assert disk.read_bytes() == bytes(48 * MiB)  # nothing written


@pytest.mark.parametrize(
    "bad",
    [
        {"partitions": []},
        {"disk": "/dev/sda", "partitions": "root"},
        {"disk": "/dev/sda", "partitions": [{"size": MiB}]},
        {"disk": "/dev/sda", "partitions": [{"label": "a", "size": None}, {"label": "b"}]},
    ],
)
def test_malformed_table_instructions_are_refused(bad):
    with pytest.raises(layout.LayoutFailed):
        layout.parse([bad])


def test_partitions_of_a_mapped_block_device_are_mapped_to_its_nodes(tmp_path):
    plain = DiskMap({"/dev/sda": str(tmp_path / "a.img"), "/dev/nvme0n1": "/dev/null"})
    mapped = layout.with_partitions(plain, ["/dev/sda2", "/dev/nvme0n1p3", "/dev/sdb1"])
    assert mapped.mapping == plain.mapping  # /dev/null is no block device; files have no nodes
    assert layout.with_partitions(DiskMap(), ["/dev/sda2"]).mapping == {}
    assert layout.partition_number("/dev/sda12", "/dev/sda") == 12
    assert layout.partition_number("/dev/nvme0n1p2", "/dev/nvme0n1") == 2
    assert layout.partition_number("/dev/nvme0n12", "/dev/nvme0n1") is None
    assert layout.partition_number("/dev/sdab", "/dev/sda") is None


# -- the whole agent on a loop device -------------------------------------------------


@pytest.fixture
def scanned_loop(tmp_path):
    """A 48 MiB loop device whose partitions get nodes (losetup --partscan; root only)."""
    backing = tmp_path / "backing.img"
    with backing.open("wb") as file:
        file.write(os.urandom(MiB))  # an old, unrelated start of disk
        file.truncate(48 * MiB)
    with loop_device(backing, partscan=True) as device:
        yield device


def run_agent(baas, device):
    args = [
        *("--server", baas.url, "--mac", MAC, "--token", baas.boot_token),
        *("--disk", f"/dev/sda={device}", "--kernel-cmdline", "/nonexistent", "--retries", "1"),
    ]
    return main(args)


@pytest.mark.root
def test_the_agent_partitions_a_disk_writes_into_a_partition_and_reads_user_data_back(
    baas, image, tmp_path, scanned_loop
):
    device = scanned_loop
    system = store(baas, image, "zstd", tmp_path)  # 16 MiB
    baas.instructions = {
        "sync": [],
        "write": [{**system, "disk": "/dev/sda1"}],
        "layouts": [instruction()],
    }

    assert run_agent(baas, device) == 0

    (result,) = baas.results
    assert result["state"] == "done", result
    assert result["written"][0]["disk"] == "/dev/sda1"
    (table,) = result["layouts"]
    assert table["created"] is True and table["disk"] == "/dev/sda"
    root, home = Path(f"{device}p1"), Path(f"{device}p2")
    with root.open("rb") as file:
        assert file.read(16 * MiB) == image.read_bytes()
    labels = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "PART_ENTRY_NAME", str(home)],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert labels == ["home"]

    # The system writes user data to /home; the next deployment brings it back first
    # and finds the table in place, so the partition is not wiped.
    home_data = make_image(tmp_path / "home.raw", 26 * MiB, [(0, 5000), (3 * MiB, 7000)], seed=3)
    with home.open("r+b") as file:
        file.write(home_data.read_bytes())
    baas.results.clear()
    baas.checked_in = False  # the next deployment's boot
    baas.instructions = {
        "sync": [
            {
                "image": USER_DATA,
                "disk": "/dev/sda2",
                "version": 0,
                "size": 26 * MiB,
                "sha256": hashlib.sha256(b"what was flashed").hexdigest(),
                "upload_url": f"/api/image/{USER_DATA}",
            }
        ],
        "write": [{**system, "disk": "/dev/sda1"}],
        "layouts": [instruction()],
    }

    assert run_agent(baas, device) == 0

    (result,) = baas.results
    assert result["state"] == "done", result
    assert result["layouts"][0]["created"] is False
    assert baas.uploads[-1]["raw"] == home_data.read_bytes()
    with home.open("rb") as file:
        assert file.read(26 * MiB) == home_data.read_bytes()  # still there
    assert result["written"][0]["image"] == IMAGE
