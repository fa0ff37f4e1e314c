"""Fixtures for the agent's tests: images, nginx, a cutting proxy, a fake BAAS.

None of these needs a database; the agent imports nothing from Django.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from baas_agent.client import Client
from baas_agent.disks import DiskMap

from tests.agent.servers import CuttingProxy, FakeBaas, Nginx
from tests.diskimage.layouts import make_image, sample_image
from tests.diskimage.loopdev import loop_device as attached_loop_device

__all__ = ["make_image"]  # the agent's tests take it from here

MiB = 1 << 20


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def data_extents(path: Path) -> list[tuple[int, int]]:
    """``(start, end)`` of a file's data regions, as SEEK_DATA/SEEK_HOLE see them."""
    extents = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, position = os.fstat(fd).st_size, 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            position = end
    finally:
        os.close(fd)
    return extents


def agent_client(baas: FakeBaas) -> Client:
    """The agent's client for the fake BAAS: short timeouts, retries without sleeping."""
    return Client(baas.url, baas.deployment_token, timeout=5, sleep=lambda _: None)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return tmp_path / "sda.img"


@pytest.fixture
def disks(disk: Path) -> DiskMap:
    """The server's /dev/sda is the test's file ``disk``."""
    return DiskMap({"/dev/sda": str(disk)})


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return sample_image(tmp_path)


def fill_with_garbage(path: Path, size: int) -> None:
    with path.open("wb") as file:
        for _ in range(size // MiB):
            file.write(os.urandom(MiB))


@pytest.fixture
def loop_device(tmp_path):
    """A real block device: a loop device over a 16 MiB file (root only)."""
    backing = tmp_path / "backing.img"
    fill_with_garbage(backing, 16 * MiB)
    with attached_loop_device(backing) as device:
        yield device, backing


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    root = tmp_path / "www"
    work = tmp_path / "nginx"
    root.mkdir()
    work.mkdir()
    server = Nginx(root, work)
    yield server
    server.stop()


@pytest.fixture
def proxy_factory() -> Iterator:
    proxies: list[CuttingProxy] = []

    def make(upstream: int, **kwargs) -> CuttingProxy:
        proxy = CuttingProxy(upstream, **kwargs)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def baas() -> Iterator[FakeBaas]:
    server = FakeBaas().start()
    yield server
    server.stop()
