"""The generated test disk: a sparse raw image of text, binary-like, random and zero
extents, deterministic from a seed, with its zstd copy (reused from a ``--keep`` run)."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from _lib.util import MiB, log, run, timed
from diskimage import BLOCK

PIECE = 1 << 20  # generation writes and hashes in pieces of this size, never a whole image
LAYOUT_VERSION = 1  # bump when the generator changes, so cached test data is rebuilt

# Segment kinds and their share of the written bytes: an OS disk holds text
# (configs, scripts, logs), binaries (mostly compressible code and tables),
# already-compressed files (random-looking) and zero blocks that were written.
KINDS = (("text", 0.35), ("binary", 0.40), ("random", 0.20), ("zeros", 0.05))
# binary-like bytes: half zeros, a quarter from 16 common values, a quarter from 64.
BINARY_TABLE = bytes(0 if b < 128 else ((b - 128) % 16) * 17 if b < 192 else b for b in range(256))


@dataclass
class TestImage:
    raw: Path
    zst: Path
    size: int
    sha256: str
    written: int  # bytes written into extents (allocated in the raw file)
    data: int  # bytes of 4 KiB blocks holding anything but zeros: the least a sparse copy needs
    extents: int
    zst_size: int = 0
    seed: int = 0
    layout: int = LAYOUT_VERSION


def _plan_extents(rng: random.Random, size: int, data: int) -> list[tuple[int, int]]:
    """(offset, length) of the data extents: ~70 % small files, some big ones, gaps between."""
    lengths, total = [], 0
    while total < data:
        pick = rng.random()
        if pick < 0.70:
            length = rng.randint(1, 64) * BLOCK  # 4 KiB .. 256 KiB
        elif pick < 0.95:
            length = rng.randint(64, 2048) * BLOCK  # .. 8 MiB
        else:
            length = rng.randint(2048, 16384) * BLOCK  # .. 64 MiB
        if length > BLOCK and rng.random() < 0.3:
            length -= rng.randint(1, 7) * 512  # a file's last block, partly used
        length = min(length, data - total)
        lengths.append(length)
        total += length
    free = size - sum(-(-n // BLOCK) * BLOCK for n in lengths)
    if free < 0:
        raise SystemExit("--data does not fit in --size")
    weights = [rng.random() for _ in range(len(lengths) + 1)]
    scale = free / sum(weights)
    extents, offset = [], 0
    for length, weight in zip(lengths, weights, strict=False):
        offset += int(weight * scale) // BLOCK * BLOCK
        extents.append((offset, length))
        offset += -(-length // BLOCK) * BLOCK
    return extents


def text_pool(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz_-"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
    shapes = (
        lambda w: f"{w[0]} = {w[1]}",
        lambda w: f"/usr/lib/{w[0]}/{w[1]}.so.{len(w[2])}",
        lambda w: f"[{w[0]}] {w[1]} {w[2]}: {w[3]} {w[4]}",
        lambda w: f"    if {w[0]}({w[1]}) then {w[2]}.{w[3]}() end",
        lambda w: " ".join(w),
    )
    return [rng.choice(shapes)(rng.choices(words, k=8)) for _ in range(6000)]


def _text(rng: random.Random, pool: list[str], n: int) -> bytes:
    parts, size = [], 0
    while size < n:
        lines = rng.choices(pool, k=1024)
        tokens = rng.randbytes(4096).hex()  # a little noise per line: numbers, ids, dates
        text = "".join(f"{line} {tokens[i * 8 : i * 8 + 8]}\n" for i, line in enumerate(lines))
        parts.append(text.encode())
        size += len(parts[-1])
    return b"".join(parts)[:n]


def segment(rng: random.Random, pool: list[str], kind: str, n: int) -> bytes:
    if kind == "text":
        return _text(rng, pool, n)
    if kind == "binary":
        return rng.randbytes(n).translate(BINARY_TABLE)
    if kind == "random":
        return rng.randbytes(n)
    return bytes(n)


def _hash_zeros(digest, n: int, zeros: memoryview) -> None:
    while n:
        step = min(n, len(zeros))
        digest.update(zeros[:step])
        n -= step


def generate_raw(path: Path, size: int, data: int, seed: int) -> TestImage:
    """A sparse raw image: ``data`` bytes in extents over ``size``, written in 1 MiB pieces."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    pool = text_pool(rng)
    extents = _plan_extents(rng, size, data)
    names, weights = zip(*KINDS, strict=True)
    digest, zeros = hashlib.sha256(), memoryview(bytes(PIECE))
    data_bytes = position = 0
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            _hash_zeros(digest, offset - position, zeros)
            f.seek(offset)
            done = 0
            while done < length:
                n = min(length - done, rng.randint(4, 256) * BLOCK)
                kind = rng.choices(names, weights)[0]
                for start in range(0, n, PIECE):
                    piece = segment(rng, pool, kind, min(PIECE, n - start))
                    f.write(piece)
                    digest.update(piece)
                if kind != "zeros":
                    data_bytes += -(-n // BLOCK) * BLOCK
                done += n
            position = offset + length
        _hash_zeros(digest, size - position, zeros)
        f.flush()
        os.fsync(f.fileno())
    return TestImage(
        raw=path,
        zst=path.with_suffix(".img.zst"),
        size=size,
        sha256=digest.hexdigest(),
        written=sum(n for _, n in extents),
        data=data_bytes,
        extents=len(extents),
        seed=seed,
    )


def test_image(directory: Path, size: int, data: int, seed: int) -> TestImage:
    """The test image and its zstd form, reused from an earlier ``--keep`` run when identical."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"disk-s{seed}-{size}-{data}.img"
    manifest = raw.with_suffix(".json")
    if manifest.exists() and raw.exists():
        cached = TestImage(**{**json.loads(manifest.read_text()), "raw": raw})
        cached.zst = Path(cached.zst)
        if cached.layout == LAYOUT_VERSION and cached.zst.exists():
            log(f"reusing test data {raw}")
            return cached
    log(f"generating {size / 2**30:.1f} GiB sparse image with {data / MiB:.0f} MiB of data")
    seconds, image = timed(lambda: generate_raw(raw, size, data, seed))
    log(f"  written in {seconds:.1f} s: {image.extents} extents, sha256 {image.sha256[:16]}…")
    zstd = ["zstd", "-T0", "-3", "-q", "-f", str(raw), "-o", str(image.zst)]
    seconds, _ = timed(lambda: run(zstd))
    image.zst_size = image.zst.stat().st_size
    log(f"  zstd -T0 -3 in {seconds:.1f} s: {image.zst_size / MiB:.0f} MiB")
    manifest.write_text(json.dumps({**asdict(image), "raw": str(raw), "zst": str(image.zst)}))
    return image
