"""Partitions of a disk just written: re-reading the table, waiting for the node."""

from __future__ import annotations

from pathlib import Path

from baas_agent import partitions


def test_a_file_target_has_no_partition_table_to_re_read(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    assert partitions.reread(disk) is False
    assert partitions.reread(tmp_path / "missing") is False


def test_a_device_node_is_waited_for_until_it_appears():
    ticks = iter(range(100))
    appeared = Path("/dev/null")
    assert partitions.wait_for(appeared, clock=lambda: next(ticks), sleep=lambda _: None)
    missing = Path("/dev/baas-no-such-partition")
    waited = []
    found = partitions.wait_for(
        missing, timeout=3, clock=lambda: next(ticks), sleep=lambda s: waited.append(s)
    )
    assert found is False and waited and set(waited) == {0.1}


def test_paths_outside_dev_are_not_waited_for(tmp_path):
    assert partitions.wait_for(tmp_path / "later", sleep=lambda _: 1 / 0) is False
