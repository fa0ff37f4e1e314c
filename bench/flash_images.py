"""The images of ``flash.py``: the generated one, an ext4 made with ``mkfs.ext4 -d``, and
each one's next version with 1 % of its data changed.

* ``generated``: ``catalogue.py``'s test disk (``_lib/testimage.py``: text, binary-like
  and random extents with gaps between them). Its next version rewrites whole extents
  of at most 1 MiB (files), picked at random, with random bytes until 1 % of the data
  changed.
* ``ext4``: ``--data`` of random files (70 % of 4-256 KiB, 25 % up to 4 MiB, 5 % up
  to 32 MiB) in a directory tree, made into an ext4 of ``--size`` by ``mkfs.ext4 -d``
  (fixed UUID, hash seed and time, so that the same tree gives the same bytes).
  Less compressible than the generated image, and its files lie back to back. Its
  next version is the same tree with 1 % of the data's files (small and medium ones,
  at random) rewritten with new random bytes of the same size, made the same way:
  the same blocks, other bytes in the changed files (and their inodes' ctime).

Everything is generated on the fly in the work directory, never committed, and
reused from an earlier ``--keep`` run when the manifest says it is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from _lib.testimage import TestImage, test_image
from _lib.util import MiB, log, run, timed

from diskimage import BLOCK
from diskimage.datamap import DataMapper
from diskimage.holes import data_extents

EXT4_LAYOUT = 1  # bump when the ext4 generator changes
FIXED_UUID = "0b0e5c52-7a4e-4f57-9f4e-2f1d9c1a3b00"
FAKE_TIME = "1700000000"
CHANGED = 0.01  # the share of the data that differs in the next version


@dataclass
class NextVersion:
    raw: Path
    sha256: str
    changed: int  # bytes of 4 KiB blocks that differ from the first version
    files: int  # files (extents) rewritten


def scan(path: Path, size: int) -> tuple[str, int, int]:
    """SHA-256 (holes hashed as zeros), bytes of non-zero 4 KiB blocks, and data ranges."""
    digest, mapper = hashlib.sha256(), DataMapper(sha256=False)
    zeros = memoryview(bytes(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    position = 0
    try:
        for start, end in data_extents(fd, 0, size):
            _zeros(digest, mapper, zeros, start - position)
            for offset in range(start, end, 1 << 20):
                piece = os.pread(fd, min(1 << 20, end - offset), offset)
                digest.update(piece)
                mapper.update(piece)
            position = end
        _zeros(digest, mapper, zeros, size - position)
    finally:
        os.close(fd)
    datamap = mapper.finish(digest.hexdigest())
    return datamap.sha256, datamap.data_bytes, len(datamap.ranges)


def _zeros(digest, mapper: DataMapper, zeros: memoryview, n: int) -> None:
    mapper.skip(n)
    while n:
        step = min(n, len(zeros))
        digest.update(zeros[:step])
        n -= step


def changed_blocks(first: Path, second: Path, size: int) -> int:
    """Bytes of 4 KiB blocks that differ between two sparse images of ``size`` bytes."""
    runs: list[tuple[int, int]] = []
    for path in (first, second):
        fd = os.open(path, os.O_RDONLY)
        try:
            runs += data_extents(fd, 0, size)
        finally:
            os.close(fd)
    changed = 0
    with first.open("rb") as a, second.open("rb") as b:
        for start, end in _union(runs):
            for offset in range(start, end, 1 << 20):
                length = min(1 << 20, end - offset)
                one, two = (
                    os.pread(a.fileno(), length, offset),
                    os.pread(b.fileno(), length, offset),
                )
                one, two = one.ljust(length, b"\0"), two.ljust(length, b"\0")
                for block in range(0, length, BLOCK):
                    if one[block : block + BLOCK] != two[block : block + BLOCK]:
                        changed += min(BLOCK, length - block)
    return changed


def _union(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(runs):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# --- generated -----------------------------------------------------------------------------


def generated(directory: Path, size: int, data: int, seed: int) -> tuple[TestImage, NextVersion]:
    image = test_image(directory, size, data, seed)
    raw = image.raw.with_name(image.raw.stem + "-next.img")
    manifest = raw.with_suffix(".json")
    if manifest.exists() and raw.exists():
        return image, NextVersion(**{**json.loads(manifest.read_text()), "raw": raw})
    rng = random.Random(seed + 1)  # noqa: S311 - reproducible test data, not secrets
    run(["cp", "--sparse=always", "--reflink=auto", str(image.raw), str(raw)])
    fd = os.open(image.raw, os.O_RDONLY)
    try:
        files = [(s, e) for s, e in data_extents(fd, 0, size) if e - s <= MiB]
    finally:
        os.close(fd)
    rng.shuffle(files)
    target, done, count = int(image.data * CHANGED), 0, 0
    with raw.open("r+b") as disk:
        for start, end in files:
            if done >= target:
                break
            disk.seek(start)
            disk.write(rng.randbytes(end - start))
            done += end - start
            count += 1
    sha256, _, _ = scan(raw, size)
    following = NextVersion(raw, sha256, changed_blocks(image.raw, raw, size), count)
    manifest.write_text(json.dumps({**asdict(following), "raw": str(raw)}))
    log(f"  next version: {count} files rewritten, {following.changed / MiB:.1f} MiB changed")
    return image, following


# --- ext4 ----------------------------------------------------------------------------------


def _file_sizes(rng: random.Random, data: int) -> list[int]:
    sizes, total = [], 0
    while total < data:
        pick = rng.random()
        if pick < 0.70:
            n = rng.randint(1, 64) * BLOCK - rng.randint(0, BLOCK - 1)
        elif pick < 0.95:
            n = rng.randint(64, 1024) * BLOCK - rng.randint(0, BLOCK - 1)
        else:
            n = rng.randint(1024, 8192) * BLOCK
        n = min(n, data - total)
        sizes.append(n)
        total += n
    return sizes


def _tree(root: Path, sizes: list[int], rng: random.Random) -> list[Path]:
    if root.exists():
        shutil.rmtree(root)
    paths = []
    for index, n in enumerate(sizes):
        path = root / f"d{index // 100:03d}" / f"f{index:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            for start in range(0, n, MiB):
                file.write(rng.randbytes(min(MiB, n - start)))
        paths.append(path)
    return paths


def _mkfs(tree: Path, raw: Path, size: int) -> None:
    raw.unlink(missing_ok=True)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": FAKE_TIME}
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-U", FIXED_UUID, "-E", f"hash_seed={FIXED_UUID}",
         "-L", "bench", "-d", str(tree), str(raw), f"{size // 1024}k"],
        check=True, env=env, capture_output=True,
    )  # fmt: skip


def ext4(directory: Path, size: int, data: int, seed: int) -> tuple[TestImage, NextVersion]:
    """The ext4 image of random files and its next version (1 % of the files rewritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"ext4-s{seed}-{size}-{data}.img"
    manifest = raw.with_suffix(".json")
    if manifest.exists() and raw.exists():
        cached = json.loads(manifest.read_text())
        if cached.get("layout") == EXT4_LAYOUT:
            image = TestImage(
                **{**cached["image"], "raw": raw, "zst": Path(cached["image"]["zst"])}
            )
            return image, NextVersion(**{**cached["next"], "raw": Path(cached["next"]["raw"])})
    if shutil.which("mkfs.ext4") is None:
        raise SystemExit("mkfs.ext4 is not installed (e2fsprogs)")
    log(f"generating an ext4 of {size / 2**30:.1f} GiB with {data / MiB:.0f} MiB of random files")
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    tree, tree_next = directory / "ext4-tree", directory / "ext4-tree-next"
    paths = _tree(tree, _file_sizes(rng, data), rng)
    # The next tree: hard links to the same files (the same inodes, times and all), but
    # 1 % of the data in new files of the same sizes, with the old files' times.
    if tree_next.exists():
        shutil.rmtree(tree_next)
    shutil.copytree(tree, tree_next, copy_function=os.link)
    candidates = [p for p in paths if p.stat().st_size <= 4 * MiB]
    rng.shuffle(candidates)
    done, count = 0, 0
    for path in candidates:
        if done >= data * CHANGED:
            break
        twin = tree_next / path.relative_to(tree)
        stat = path.stat()
        twin.unlink()
        twin.write_bytes(rng.randbytes(stat.st_size))
        os.utime(twin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        done += stat.st_size
        count += 1
    seconds, _ = timed(lambda: _mkfs(tree, raw, size))
    log(f"  mkfs.ext4 -d in {seconds:.1f} s")
    raw_next = raw.with_name(raw.stem + "-next.img")
    _mkfs(tree_next, raw_next, size)
    shutil.rmtree(tree)
    shutil.rmtree(tree_next)
    sha256, data_bytes, ranges = scan(raw, size)
    image = TestImage(
        raw=raw, zst=raw.with_suffix(".img.zst"), size=size, sha256=sha256,
        written=data, data=data_bytes, extents=ranges, seed=seed,
    )  # fmt: skip
    seconds, _ = timed(
        lambda: run(["zstd", "-T0", "-3", "-q", "-f", str(raw), "-o", str(image.zst)])
    )
    image.zst_size = image.zst.stat().st_size
    log(f"  zstd -T0 -3 in {seconds:.1f} s: {image.zst_size / MiB:.0f} MiB")
    next_sha, _, _ = scan(raw_next, size)
    following = NextVersion(raw_next, next_sha, changed_blocks(raw, raw_next, size), count)
    log(f"  next version: {count} files rewritten, {following.changed / MiB:.1f} MiB changed")
    manifest.write_text(
        json.dumps(
            {
                "layout": EXT4_LAYOUT,
                "image": {**asdict(image), "raw": str(raw), "zst": str(image.zst)},
                "next": {**asdict(following), "raw": str(raw_next)},
            }
        )
    )
    return image, following


IMAGES = {"generated": generated, "ext4": ext4}
