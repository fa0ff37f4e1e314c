"""zstd decoded block by block with libzstd: the same bytes as ``zstd -d``, zeros as holes."""

from __future__ import annotations

import os
import random
import subprocess

import pytest
import xxhash
import zstandard

from diskimage import zstdblocks
from diskimage.zstdblocks import BlockZstdDecoder, ZstdBlockError

KiB, MiB = 1 << 10, 1 << 20

pytestmark = pytest.mark.skipif(not zstdblocks.available(), reason="libzstd.so.1 is not installed")


def disk(seed: int = 1) -> bytes:
    """A small disk: runs of zeros between text, random bytes and repeats far apart."""
    rng = random.Random(seed)  # noqa: S311 - test data, reproducible
    text = b"".join(b"line %d of a config file\n" % rng.randrange(50) for _ in range(20000))
    noise = rng.randbytes(300 * KiB)
    return b"".join(
        [
            b"\xeb\x63\x90" + bytes(509) + b"\x55\xaa",  # a boot sector, mostly zeros
            bytes(3 * MiB + 1000),  # a hole that does not end on a block
            text,
            bytes(700 * KiB),
            noise,
            b"\xff" * (300 * KiB),  # a run of one byte that is not zero: data
            bytes(2 * MiB),
            noise,  # the same bytes again, 3 MiB later: a match only a large window finds
            text[:5000],
        ]
    )


def zstd_cli(data: bytes, *options: str) -> bytes:
    done = subprocess.run(["zstd", "-q", "-c", *options], input=data, capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def decode(
    packed: bytes, piece: int | None = None, checksums: list | None = None, **options
) -> tuple[bytes, int, int]:
    """The raw bytes (holes filled with zeros), the bytes of holes, the number of data pieces."""
    out = bytearray()
    holes, pieces = [], []

    def data(chunk: bytes) -> None:
        assert isinstance(chunk, bytes) and 0 < len(chunk) <= zstdblocks.CHUNK
        pieces.append(len(chunk))
        out.extend(chunk)

    def hole(length: int) -> None:
        holes.append(length)
        out.extend(bytes(length))

    decoder = BlockZstdDecoder(data, hole, **options)
    step = piece or len(packed) or 1
    for start in range(0, len(packed), step):
        decoder.write(packed[start : start + step])
    decoder.finish()
    if checksums is not None:
        checksums.extend(decoder.checksums)
    return bytes(out), sum(holes), len(pieces)


@pytest.mark.parametrize(
    "options",
    [
        ("-3",),
        ("-19",),
        ("-1", "-T2", "-B1MiB"),  # several jobs, each starting without RLE
        ("--zstd=wlog=10",),  # a 1 KiB window: the ring wraps every few blocks
        ("--zstd=wlog=17", "--no-check"),
        ("--long=27", "-1"),
    ],
)
@pytest.mark.parametrize("checksum", [True, False], ids=["checked", "left-to-caller"])
def test_the_bytes_are_those_of_zstd_d_and_the_zeros_come_as_holes(options, checksum):
    data = disk()
    packed = zstd_cli(data, *options)
    raw, holes, _ = decode(packed, checksum=checksum)
    assert raw == data
    # Every whole block of zeros past a frame's first block is an RLE block.
    assert holes >= 4 * MiB


@pytest.mark.parametrize("piece", [1, 3, 7, 4 * KiB + 1, MiB])
@pytest.mark.parametrize("checksum", [True, False], ids=["checked", "left-to-caller"])
def test_input_cut_anywhere_gives_the_same_bytes(piece, checksum):
    data = disk(2)[: 2 * MiB]
    packed = zstd_cli(data, "--zstd=wlog=12")
    assert decode(packed, piece, checksum=checksum)[0] == data


def test_frames_without_a_content_size_or_checksum_and_skippable_frames():
    data = disk(3)
    streamed = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False)
    stream = streamed.compressobj()
    first = stream.compress(data[: 5 * MiB]) + stream.flush()
    empty = zstandard.ZstdCompressor().compress(b"")
    skippable = b"\x50\x2a\x4d\x18" + (6).to_bytes(4, "little") + b"seek!!"
    single = zstandard.ZstdCompressor(write_checksum=True).compress(data[5 * MiB :])
    packed = first + empty + skippable + single
    assert zstandard.get_frame_parameters(first).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert decode(packed)[0] == data
    assert decode(packed, 1000, checksum=False)[0] == data
    assert decode(empty) == (b"", 0, 0)


def test_data_is_handed_on_in_pieces_of_up_to_a_mebibyte():
    data = os.urandom(5 * MiB)
    raw, holes, pieces = decode(zstd_cli(data, "-1"))
    assert raw == data and holes == 0
    assert pieces <= 10  # consecutive blocks together, not one piece per 128 KiB block (40)


def test_a_checksum_mismatch_is_an_error_unless_left_to_the_caller():
    data = os.urandom(200 * KiB) + bytes(MiB)  # random bytes: stored in raw blocks
    packed = bytearray(zstd_cli(data))
    packed[1000] ^= 0xFF  # inside a raw block: only the checksum can tell
    with pytest.raises(ZstdBlockError, match="checksum"):
        decode(bytes(packed))
    raw, _, _ = decode(bytes(packed), checksum=False)
    assert raw != data and len(raw) == len(data)


def test_corrupt_truncated_and_foreign_input_is_refused():
    packed = zstd_cli(disk(4))
    with pytest.raises(ZstdBlockError, match="middle of a frame"):
        decode(packed[:-10])
    with pytest.raises(ZstdBlockError, match="middle of a frame"):
        decode(b"")
    with pytest.raises(ZstdBlockError, match="not zstd"):
        decode(b"this is not zstd at all")
    finished = BlockZstdDecoder(lambda data: None, lambda length: None)
    finished.write(zstd_cli(b"one frame"))
    finished.finish()
    with pytest.raises(ZstdBlockError, match="closed"):  # libzstd's context is gone
        finished.write(packed)
    damaged = bytearray(packed)
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)
    with pytest.raises(ZstdBlockError, match="corrupt"):
        decode(bytes(damaged))


def test_a_content_size_that_does_not_match_the_frame_is_refused():
    packed = bytearray(zstandard.ZstdCompressor(write_checksum=False).compress(bytes(300 * KiB)))
    assert packed[4] & 0xC0 == 0x80  # a 4-byte content size follows the descriptor
    size_at = 5 if packed[4] & 0x20 else 6
    packed[size_at : size_at + 4] = (300 * KiB + 1).to_bytes(4, "little")
    with pytest.raises(ZstdBlockError, match="corrupt"):
        decode(bytes(packed))


def test_a_window_larger_than_128_mib_is_refused_with_the_fix():
    packed = zstd_cli(bytes(MiB), "--long=28", "--zstd=wlog=28")
    with pytest.raises(ZstdBlockError, match="--long=27"):
        decode(packed)


def _reference(packed: bytes) -> bytes | None:
    """What python-zstandard makes of ``packed``, frame after frame (None: it refuses it)."""
    out, rest = bytearray(), packed
    try:
        while rest:
            frame = zstandard.ZstdDecompressor().decompressobj()
            out += frame.decompress(rest)
            if not frame.eof:
                return None  # cut short
            rest = frame.unused_data
    except zstandard.ZstdError:
        return None
    return bytes(out) if packed else None


def test_random_streams_and_damage_decode_as_libzstd_streams_them_or_are_refused():
    """Whatever the bytes, the decoder agrees with the stream decoder or says why not."""
    rng = random.Random(7)  # noqa: S311 - test data, reproducible
    for _ in range(60):
        pieces = []
        for _ in range(rng.randrange(1, 6)):
            kind = rng.choice(["zeros", "random", "text", "ones"])
            n = rng.randrange(0, 300 * KiB)
            pieces.append(
                bytes(n)
                if kind == "zeros"
                else rng.randbytes(n)
                if kind == "random"
                else b"\xff" * n
                if kind == "ones"
                else b"word %d " % rng.randrange(99) * (n // 8)
            )
        data = b"".join(pieces)
        params = zstandard.ZstdCompressionParameters.from_level(
            rng.choice([1, 3, 9]),
            window_log=rng.choice([10, 14, 17, 20]),
            write_checksum=rng.random() < 0.7,
        )
        packed = bytearray(zstandard.ZstdCompressor(compression_params=params).compress(data))
        if rng.random() < 0.5:  # damage it: a byte flipped, or cut short
            if rng.random() < 0.5:
                packed[rng.randrange(len(packed))] ^= 1 << rng.randrange(8)
            else:
                del packed[rng.randrange(len(packed)) :]
        packed = bytes(packed)
        expected = _reference(packed)
        piece = rng.choice([1, 5, 4096, MiB])
        for checksum in (True, False):
            left: list[tuple[int, int, int]] = []
            try:
                raw, _, _ = decode(packed, piece, checksum=checksum, checksums=left)
            except ZstdBlockError:
                raw = None
            if raw == data and expected is None:
                continue  # a flipped bit that changes nothing, which this libzstd ignores
            if checksum or expected is not None or raw is None:
                assert raw == expected
            else:  # damage only the checksum tells: the caller is told what to check
                assert any(
                    xxhash.xxh64(raw[start:end]).intdigest() & 0xFFFFFFFF != value
                    for start, end, value in left
                )
