"""libzstd's block-level ("bufferless") API, loaded through ctypes, for the block decoder
(:mod:`diskimage.zstdblocks`).

The shared library is the system's ``libzstd.so.1`` (Debian's ``libzstd1``,
which the ``zstd`` tool depends on). Recent ``zstd.h`` marks this API deprecated
(it stays exported from the shared library), so it is held to a contract:
``tests/diskimage/test_zstdblocks_contract.py`` checks, against the libzstd that
BAAS installs, every symbol and behaviour declared here. :func:`available` tells
whether it was found, and is not turned off with ``BAAS_ZSTD_BLOCK_API=off``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

FORCE_IGNORE_CHECKSUM = 1002  # ZSTD_d_forceIgnoreChecksum (ZSTD_d_experimentalParam3)

SWITCH = "BAAS_ZSTD_BLOCK_API"  # "off": behave as if libzstd had no block-level API


class FrameHeader(ctypes.Structure):
    """ZSTD_frameHeader (zstd.h), with room to spare for fields added later."""

    _fields_ = [
        ("frameContentSize", ctypes.c_ulonglong),
        ("windowSize", ctypes.c_ulonglong),
        ("blockSizeMax", ctypes.c_uint),
        ("frameType", ctypes.c_int),
        ("headerSize", ctypes.c_uint),
        ("dictID", ctypes.c_uint),
        ("checksumFlag", ctypes.c_uint),
        ("_reserved", ctypes.c_uint * 8),
    ]


@functools.cache
def load() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    """libzstd twice: calls that let other threads run while they work (decoding a block),
    and calls that keep the GIL (the quick ones: not worth handing it over and back)."""
    for name in ("libzstd.so.1", ctypes.util.find_library("zstd")):
        if not name:
            continue
        try:
            released, kept = ctypes.CDLL(name), ctypes.PyDLL(name)
        except OSError:
            continue
        return (released, kept) if _declare(released) and _declare(kept) else None
    return None


def _declare(lib: ctypes.CDLL) -> bool:
    """Declare the functions used; False if this libzstd lacks any, or is too old."""
    size_t, ptr = ctypes.c_size_t, ctypes.c_void_p
    signatures = {
        "ZSTD_versionNumber": (ctypes.c_uint, []),
        "ZSTD_createDCtx": (ptr, []),
        "ZSTD_freeDCtx": (size_t, [ptr]),
        "ZSTD_DCtx_setParameter": (size_t, [ptr, ctypes.c_int, ctypes.c_int]),
        "ZSTD_decompressBegin": (size_t, [ptr]),
        "ZSTD_nextSrcSizeToDecompress": (size_t, [ptr]),
        "ZSTD_decompressContinue": (size_t, [ptr, ptr, size_t, ptr, size_t]),
        "ZSTD_insertBlock": (size_t, [ptr, ptr, size_t]),
        "ZSTD_getFrameHeader": (size_t, [ctypes.POINTER(FrameHeader), ptr, size_t]),
        "ZSTD_isError": (ctypes.c_uint, [size_t]),
        "ZSTD_getErrorName": (ctypes.c_char_p, [size_t]),
    }
    try:
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except AttributeError:
        return False
    version: int = lib.ZSTD_versionNumber()
    return version >= 10407  # ZSTD_d_forceIgnoreChecksum came with 1.4.7


def switched_off() -> bool:
    """Whether the environment says to do without the block API (read at every use)."""
    return os.environ.get(SWITCH, "").lower() in ("0", "off", "no", "false")


def available() -> bool:
    """Whether libzstd's block-level API could be loaded, and is not turned off."""
    return not switched_off() and load() is not None
