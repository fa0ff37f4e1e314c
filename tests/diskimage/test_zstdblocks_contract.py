"""The contract of libzstd's block-level API that :mod:`diskimage.zstdblocks` relies on.

Recent ``zstd.h`` marks the block API deprecated; it stays exported from the
shared library. These tests hold, against the libzstd BAAS installs (Debian's
``libzstd1``, as ``./dev`` and the README's install give it), every symbol,
constant and behaviour the decoder uses — so a new libzstd that changes one
fails here, by name, not in an upload. Without the API (or with
``BAAS_ZSTD_BLOCK_API=off``) the decoders fall back to zstandard's stream
decoder: tested for real below, in a process started with the switch off.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest
import zstandard

from diskimage import zstdblocks, zstdlayout, zstdlib
from diskimage.zstdblocks import BlockZstdDecoder, ZstdBlockError

# The libzstd releases this contract was checked against: 1.4.7 brought
# ZSTD_d_forceIgnoreChecksum; Debian bookworm's libzstd1 is 1.5.4. A libzstd
# outside this range must be checked again (run these tests) before raising it.
TESTED_FROM, TESTED_BEFORE = 10407, 10600

needs_library = pytest.mark.skipif(
    zstdlib.load() is None, reason="libzstd.so.1 (Debian's libzstd1) is not installed"
)


def decoded(stream: bytes, *, checksum: bool = True) -> tuple[bytes, int]:
    """The image ``stream`` decodes to (holes as zeros), and how much came as holes."""
    out, holes = bytearray(), []

    def hole(length: int) -> None:
        holes.append(length)
        out.extend(bytes(length))

    decoder = BlockZstdDecoder(out.extend, hole, checksum=checksum)
    decoder.write(stream)
    decoder.finish()
    return bytes(out), sum(holes)


@needs_library
def test_the_installed_libzstd_is_a_release_this_contract_was_checked_against():
    released, _ = zstdlib.load()
    assert TESTED_FROM <= released.ZSTD_versionNumber() < TESTED_BEFORE, (
        f"libzstd {released.ZSTD_versionNumber()}: check the block API contract again"
    )


@needs_library
def test_every_function_the_decoder_calls_is_exported():
    for lib in zstdlib.load():
        for name in (
            "ZSTD_createDCtx",
            "ZSTD_freeDCtx",
            "ZSTD_DCtx_setParameter",
            "ZSTD_decompressBegin",
            "ZSTD_nextSrcSizeToDecompress",
            "ZSTD_decompressContinue",
            "ZSTD_insertBlock",
            "ZSTD_getFrameHeader",
            "ZSTD_isError",
            "ZSTD_getErrorName",
        ):
            assert hasattr(lib, name), name


@needs_library
def test_the_frame_header_struct_reads_as_declared():
    _, lib = zstdlib.load()
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"x" * 100_000)
    info = zstdlib.FrameHeader()
    assert not lib.ZSTD_isError(lib.ZSTD_getFrameHeader(ctypes.byref(info), frame, len(frame)))
    assert info.frameContentSize == 100_000
    assert info.headerSize == zstdlayout.header_size(frame[4])
    assert info.checksumFlag == 1 and info.frameType == 0 and info.dictID == 0
    assert info.windowSize >= info.blockSizeMax > 0


@needs_library
def test_ignoring_checksums_is_the_parameter_number_used():
    _, lib = zstdlib.load()
    dctx = lib.ZSTD_createDCtx()
    try:
        code = lib.ZSTD_DCtx_setParameter(dctx, zstdlib.FORCE_IGNORE_CHECKSUM, 1)
        assert not lib.ZSTD_isError(code), lib.ZSTD_getErrorName(code)
    finally:
        lib.ZSTD_freeDCtx(dctx)


@needs_library
def test_a_bad_checksum_is_caught_by_libzstd_or_left_to_the_caller():
    data = os.urandom(200_000) + bytes(1 << 20) + os.urandom(1000)
    frame = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(data))
    assert decoded(bytes(frame))[0] == data
    frame[-1] ^= 0xFF
    with pytest.raises(ZstdBlockError, match="checksum"):
        decoded(bytes(frame))
    out, _ = decoded(bytes(frame), checksum=False)
    assert out == data


@needs_library
def test_zero_blocks_skipped_as_history_decode_what_copies_from_them():
    # Zeros as RLE blocks, then data that repeats across them: libzstd copies from the
    # history ZSTD_insertBlock gave it.
    tail = os.urandom(5000)
    data = tail + bytes(4 << 20) + tail + bytes(64) + tail
    frame = zstandard.ZstdCompressor(level=19).compress(data)
    out, holes = decoded(frame, checksum=False)
    assert out == data and holes > 0


def fallback(code: str) -> dict:
    """Run ``code`` in a new process with the block API switched off; its JSON output."""
    env = {**os.environ, zstdblocks.SWITCH: "off"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_switched_off_the_decoders_fall_back_to_the_stream_decoder_and_give_the_same_bytes():
    found = fallback(
        """
import hashlib, json, os, zstandard
from diskimage import zstdblocks
from diskimage.decoders import decoder_for
data = os.urandom(300_000) + bytes(3 << 20) + b"end"
out, holes = bytearray(), []
decoder = decoder_for("zstd", out.extend, holes.append, checksum=False)
for at in range(0, len(packed := zstandard.ZstdCompressor().compress(data)), 65536):
    decoder.write(packed[at : at + 65536])
decoder.finish()
try:
    zstdblocks.BlockZstdDecoder(out.extend, holes.append)
    refused = False
except RuntimeError:
    refused = True
print(json.dumps({
    "available": zstdblocks.available(),
    "decoder": type(decoder).__name__,
    "same": bytes(out) == data,
    "holes": sum(holes),
    "refused": refused,
}))
"""
    )
    assert found == {
        "available": False,
        "decoder": "ZstdDecoder",
        "same": True,
        "holes": 0,
        "refused": True,
    }


def test_switched_off_a_truncated_stream_is_still_refused():
    found = fallback(
        """
import json, os, zstandard
from diskimage import DecodeError
from diskimage.decoders import decoder_for
packed = zstandard.ZstdCompressor().compress(os.urandom(100_000))
decoder = decoder_for("zstd", lambda data: None, lambda length: None)
decoder.write(packed[:-10])
try:
    decoder.finish()
    print(json.dumps({"refused": None}))
except DecodeError as exc:
    print(json.dumps({"refused": str(exc)}))
"""
    )
    assert "middle of a frame" in found["refused"]
