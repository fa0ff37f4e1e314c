"""Streaming decompression (none, gzip, zstd) and zstd compression, in-process and piped."""

from __future__ import annotations

import gzip
import os
import subprocess
import threading

import pytest
import zstandard
from baas_agent import compress
from baas_agent.compress import CompressionError, decompressed, zstd_compressed

from tests.agent.conftest import MiB

RAW = os.urandom(MiB + 12345) + bytes(40 * MiB) + os.urandom(3 * MiB)


def pieces(data: bytes, size: int = 65536):
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture(params=["zstandard", "zstd command"])
def zstd_path(request, monkeypatch):
    """Run each zstd test both in-process and through the zstd command."""
    if request.param == "zstd command":
        monkeypatch.setattr(compress, "use_zstandard", lambda: False)
    return request.param


def assert_chunked(chunks: list[bytes], raw: bytes) -> None:
    assert b"".join(chunks) == raw
    assert all(len(chunk) == MiB for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= MiB


def test_an_uncompressed_stream_comes_out_in_whole_mebibytes():
    assert_chunked(list(decompressed(pieces(RAW, 333_333), "none")), RAW)


def test_a_gzip_stream_of_several_members_decompresses_in_bounded_chunks():
    stored = gzip.compress(RAW[:5000]) + gzip.compress(RAW[5000:])
    assert_chunked(list(decompressed(pieces(stored, 7777), "gzip")), RAW)


@pytest.mark.parametrize("cut", [10, -8])
def test_a_truncated_gzip_stream_is_an_error(cut):
    stored = gzip.compress(RAW)
    with pytest.raises(CompressionError, match="truncated"):
        list(decompressed(pieces(stored[:cut]), "gzip"))


def test_a_corrupt_gzip_stream_is_an_error():
    stored = bytearray(gzip.compress(RAW))
    stored[5000:5100] = os.urandom(100)
    with pytest.raises(CompressionError):
        list(decompressed(pieces(bytes(stored)), "gzip"))


@pytest.mark.parametrize(
    "make",
    [
        lambda raw: zstandard.ZstdCompressor().compress(raw),
        lambda raw: (
            zstandard.ZstdCompressor(write_checksum=True).compress(raw[:777])
            + zstandard.ZstdCompressor(write_content_size=False).compress(raw[777:])
        ),
        lambda raw: (
            subprocess.run(
                ["zstd", "-q", "-c", "-T0"], input=raw, capture_output=True, check=True
            ).stdout
        ),
    ],
    ids=["one frame", "two frames", "zstd command"],
)
def test_a_zstd_stream_decompresses_in_bounded_chunks(zstd_path, make):
    assert_chunked(list(decompressed(pieces(make(RAW), 9999), "zstd")), RAW)


@pytest.mark.parametrize("cut", [3, 100, -1, -4])
def test_a_truncated_zstd_stream_is_an_error(zstd_path, cut):
    stored = zstandard.ZstdCompressor(write_checksum=True).compress(RAW)
    with pytest.raises(CompressionError):
        list(decompressed(pieces(stored[:cut]), "zstd"))


def test_a_corrupt_zstd_stream_is_an_error(zstd_path):
    stored = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(RAW))
    stored[len(stored) // 2 : len(stored) // 2 + 64] = os.urandom(64)
    with pytest.raises(CompressionError):
        list(decompressed(pieces(bytes(stored)), "zstd"))


def test_a_skippable_frame_is_read_through():
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    assert list(decompressed([skippable, zstandard.ZstdCompressor().compress(b"x")], "zstd")) == [
        b"x"
    ]


def test_zstd_compression_round_trips(zstd_path):
    stored = b"".join(zstd_compressed(pieces(RAW, MiB)))
    assert len(stored) < len(RAW) // 5
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == RAW


def test_a_failing_source_fails_the_stream_with_its_own_error(zstd_path):
    def failing():
        yield os.urandom(MiB)
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="the disk went away"):
        list(zstd_compressed(failing()))


def test_stopping_early_ends_the_zstd_command(monkeypatch):
    monkeypatch.setattr(compress, "use_zstandard", lambda: False)
    before = threading.active_count()
    stream = decompressed(pieces(zstandard.ZstdCompressor().compress(RAW)), "zstd")
    next(stream)
    stream.close()  # no hang, no zombie, no feeder thread left
    assert threading.active_count() == before


def test_an_unknown_compression_is_refused():
    with pytest.raises(CompressionError, match="unknown compression"):
        decompressed([b""], "lz4")


def test_zstd_frames_come_as_views_of_the_chunks_whatever_their_size():
    frames = [zstandard.ZstdCompressor().compress(bytes([n]) * 5000 * n) for n in range(1, 6)]
    stream = b"".join(frames)
    for size in (1, 7, 4096, 9000, len(stream)):
        chunks = [stream[at : at + size] for at in range(0, len(stream), size)]
        found = list(compress.zstd_frames(chunks))
        assert [b"".join(parts) for parts in found] == frames
        assert all(isinstance(part, memoryview) and len(part) for p in found for part in p)


@pytest.mark.parametrize("damage", ["truncated", "no frame"])
def test_zstd_frames_of_a_broken_stream_are_an_error(damage):
    stream = zstandard.ZstdCompressor(write_checksum=True).compress(RAW[:100_000])
    broken = stream[:-3] if damage == "truncated" else b"\0" * 64 + stream
    with pytest.raises(CompressionError, match=damage if damage == "truncated" else "corrupt"):
        list(compress.zstd_frames(pieces(broken, 1000)))
