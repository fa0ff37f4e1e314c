"""Android sparse images: decoded like Android's own simg2img, written by our client so
that simg2img reads them, and refused, with a reason, when they are not whole or valid."""

from __future__ import annotations

import os
import random
import subprocess
import zlib
from pathlib import Path

import pytest

from diskimage import CHUNK
from diskimage.sparse import (
    CHUNK_HEADER,
    CRC32,
    DONT_CARE,
    FILL,
    HEADER,
    MAGIC,
    RAW,
    SparseImageDecoder,
    SparseImageError,
    crc32_zeros,
    declared_size,
    image_crc32,
    is_sparse_image,
)

MiB = 1 << 20
CLIENT = Path(__file__).resolve().parents[2] / "contrib" / "upload" / "baas-upload"


def sparse(chunks, *, block=4096, blocks=None, count=None, file_extra=0, chunk_extra=0) -> bytes:
    """A sparse image by hand: ``chunks`` are (type, blocks, payload)."""
    blocks = sum(n for _, n, _ in chunks) if blocks is None else blocks
    head = HEADER.pack(
        MAGIC, 1, 0, HEADER.size + file_extra, CHUNK_HEADER.size + chunk_extra, block, blocks,
        len(chunks) if count is None else count, 0,
    )  # fmt: skip
    out = [head, b"\xee" * file_extra]
    for kind, n, payload in chunks:
        size = CHUNK_HEADER.size + chunk_extra + len(payload)
        out += [CHUNK_HEADER.pack(kind, 0, n, size), b"\xee" * chunk_extra, payload]
    return b"".join(out)


class Decoded:
    """What a decoder handed on: the image, and how much of it came as holes."""

    def __init__(self):
        self.out = bytearray()
        self.holes = 0
        self.decoder = SparseImageDecoder(self.sink, self.hole)

    def sink(self, data: bytes) -> None:
        assert isinstance(data, bytes) and 0 < len(data) <= CHUNK
        self.out += data

    def hole(self, length: int) -> None:
        assert length > 0
        self.holes += length
        self.out += bytes(length)


def decode(stream: bytes, piece: int | None = None) -> Decoded:
    decoded = Decoded()
    step = piece or len(stream) or 1
    for start in range(0, len(stream), step):
        decoded.decoder.write(stream[start : start + step])
    decoded.decoder.finish()
    return decoded


def disk(path: Path, size: int = 24 * MiB, seed: int = 1) -> bytes:
    """A sparse file like a disk: random extents, a repeated pattern, zeros written out."""
    rng = random.Random(seed)  # noqa: S311 - test data
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(12):
            f.seek(rng.randrange(0, size - MiB) // 4096 * 4096)
            f.write(rng.randbytes(rng.randrange(1, 400_000)))
        f.seek(5 * MiB)
        f.write(b"\xab\xcd\xef\x01" * 10_000)
        f.seek(9 * MiB)
        f.write(bytes(100_000))
    return path.read_bytes()


def test_img2simg_output_decodes_to_the_image_whatever_the_pieces(tmp_path):
    data = disk(tmp_path / "disk.img")
    subprocess.run(["img2simg", tmp_path / "disk.img", tmp_path / "disk.simg"], check=True)
    stream = (tmp_path / "disk.simg").read_bytes()
    assert is_sparse_image(stream) and declared_size(stream) == len(data)
    for piece in (None, 1, 12, 28, 4095, 65537, 3 * MiB):
        decoded = decode(stream, piece)
        assert bytes(decoded.out) == data, piece
        assert decoded.holes >= 20 * MiB  # the zeros never came as bytes


def test_our_client_writes_what_simg2img_reads_and_only_the_data(tmp_path):
    data = disk(tmp_path / "disk.img", seed=2)
    written = subprocess.run(
        [CLIENT, "--output", tmp_path / "out.simg", tmp_path / "disk.img"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    subprocess.run(["simg2img", tmp_path / "out.simg", tmp_path / "back.img"], check=True)
    assert (tmp_path / "back.img").read_bytes() == data
    stream = (tmp_path / "out.simg").read_bytes()
    assert bytes(decode(stream, 100_000).out) == data
    allocated = (tmp_path / "disk.img").stat().st_blocks * 512
    assert len(stream) <= allocated + 4096  # the holes were not sent


def test_the_client_refuses_a_size_no_sparse_image_can_describe(tmp_path):
    (tmp_path / "odd.img").write_bytes(b"x" * 1001)
    result = subprocess.run(
        [CLIENT, "--output", tmp_path / "o.simg", tmp_path / "odd.img"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a multiple of 4" in result.stderr
    (tmp_path / "small.img").write_bytes(b"y" * 1000)  # 125 blocks of 8 bytes: fine
    subprocess.run([CLIENT, "--output", tmp_path / "s.simg", tmp_path / "small.img"], check=True)
    assert bytes(decode((tmp_path / "s.simg").read_bytes()).out) == b"y" * 1000


def test_fill_chunks_repeat_their_pattern_and_zero_fills_are_holes():
    stream = sparse([(FILL, 3, b"\x01\x02\x03\x04"), (FILL, 2, bytes(4)), (DONT_CARE, 1, b"")])
    decoded = decode(stream, 7)
    assert bytes(decoded.out) == b"\x01\x02\x03\x04" * 3072 + bytes(3 * 4096)
    assert decoded.holes == 3 * 4096


def test_a_long_fill_comes_in_bounded_pieces():
    decoded = decode(sparse([(FILL, 1024, b"abcd")]))  # 4 MiB out of 44 bytes in
    assert bytes(decoded.out) == b"abcd" * MiB


def test_headers_of_a_later_revision_are_skipped():
    payload = os.urandom(8192)
    stream = sparse([(RAW, 2, payload), (DONT_CARE, 3, b"")], file_extra=4, chunk_extra=8)
    assert bytes(decode(stream, 5).out) == payload + bytes(3 * 4096)


def test_crc32_chunks_are_reported_where_they_stand():
    decoded = decode(sparse([(RAW, 1, b"a" * 4096), (CRC32, 0, b"\x01\x00\x00\x00")]))
    assert decoded.decoder.crc_checks == [(4096, 1)]


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (sparse([(RAW, 1, b"a" * 4096)], block=4094), "not a multiple of 4"),
        (sparse([(0xCAC9, 1, b"")]), "unknown type 0xcac9"),
        (sparse([(RAW, 2, b"a" * 4096)]), "claims 4108 bytes"),
        (sparse([(FILL, 1, b"ab")]), "claims 14 bytes"),
        (sparse([(DONT_CARE, 1, b""), (DONT_CARE, 1, b"")], count=1), "more chunks than"),
        (sparse([(DONT_CARE, 3, b"")], blocks=2), "past the 2 blocks"),
        (sparse([(DONT_CARE, 1, b"")], count=2), "after 1 of its 2 chunks"),
        (sparse([(DONT_CARE, 1, b"")], blocks=2), "(1 of 2 blocks)"),
        (sparse([(RAW, 1, b"a" * 4096)])[:-1], "middle of a chunk"),
        (sparse([(FILL, 1, b"abcd")])[:-2], "middle of a chunk"),
        (sparse([])[:20], "middle of a chunk"),
    ],
)
def test_broken_streams_are_refused_with_the_reason(stream, message):
    with pytest.raises(SparseImageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(stream, 3)


def test_other_data_is_not_taken_for_a_sparse_image():
    good = sparse([(DONT_CARE, 1, b"")])
    assert is_sparse_image(good)
    assert not is_sparse_image(good[:27])
    assert not is_sparse_image(b"\0" * 4096)
    later = bytearray(good)
    later[4] = 2  # major version 2: another format
    assert not is_sparse_image(bytes(later)) and declared_size(bytes(later)) is None
    with pytest.raises(SparseImageError, match="not an Android sparse image"):
        decode(bytes(later))


@pytest.mark.parametrize("length", [0, 1, 3, 4096, 1_000_003, 7 * MiB])
def test_crc32_of_zeros_is_computed_as_zlib_would_hash_them(length):
    for crc in (0, 0xDEADBEEF, zlib.crc32(b"disk")):
        assert crc32_zeros(crc, length) == zlib.crc32(bytes(length), crc)


def test_image_crc32_reads_only_the_data_ranges(tmp_path):
    path = tmp_path / "disk.img"
    data = bytearray(6 * MiB)
    data[4096:12288] = os.urandom(8192)
    data[5 * MiB : 5 * MiB + 100] = os.urandom(100)
    path.write_bytes(bytes(data))
    ranges = [(4096, 12288), (5 * MiB, 5 * MiB + 4096)]
    offsets = [0, 8192, 3 * MiB, 5 * MiB + 50, len(data)]
    found = image_crc32(path, ranges, offsets)
    assert found == {at: zlib.crc32(data[:at]) for at in offsets}
    path.write_bytes(b"\xff" * len(data))  # what is outside the ranges is taken as zeros
    assert image_crc32(path, [], [len(data)]) == {len(data): zlib.crc32(bytes(len(data)))}
