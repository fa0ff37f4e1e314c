"""Ten versions, each 1 % changed from the last, on XFS: the bytes they hold together.

Part of ``bench/catalogue.py`` (``--part versions``, and in ``all``). A BAAS of
its own whose image root is an XFS made with ``reflink=1`` (in a sparse file,
loop-mounted: needs root and xfsprogs, unless ``--workdir`` is already on a
filesystem with reflinks) gets, for a raw and for a zstd image, the test disk
as its first version, then nine more, each with 1 % of the data rewritten in
place, uploaded with ``baas-upload`` and processed by the version pipeline
(its steps run in ``manage.py shell``, timed). Then:

- **held**: the bytes the disk holds for the ten versions' files, each shared
  block once (the union of their extents, FIEMAP; ``filefrag`` agrees), against
  one version's stored bytes: target <= 1.3 x (without sharing: ~10 x, the
  *logical* row, which is what any filesystem without reflinks holds);
- every version's stored map is checked against the bytes the bench uploaded
  (each range's SHA-256, nothing outside them), and after the five oldest are
  pruned the five left are read back whole and must give their own SHA-256.

Two ways to change 1 %: *files* (the default model, gated) rewrites whole files
(extents of the generated disk, picked at random, the last one in part) —
what rebuilding a kernel or editing configs does; *scattered* (information)
rewrites runs of 4 to 64 KiB at random places in the data, the worst case for
zstd, whose frames are the data map's ranges (up to 16 MiB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from _lib.baas import Baas
from _lib.table import Row
from _lib.testimage import segment, text_pool
from _lib.util import USERNAME, load_average, log, median, sync_all

from diskimage import BLOCK
from diskimage.extents import can_share

MiB = 1 << 20
COUNT = 10
CHANGE = 0.01
FS_SIZE = 24 << 30  # sparse; the versions hold ~1 GiB when shared, ~6 GiB when not
TARGET = 1.3


@contextlib.contextmanager
def reflink_root(run_dir: Path) -> Iterator[Path | None]:
    """A directory on a filesystem with reflinks: ``run_dir`` itself if it is on one, else
    a fresh XFS (reflink=1) loop-mounted under it; None when neither is possible."""
    if can_share(str(run_dir)):
        yield run_dir / "versions"
        return
    mkfs = shutil.which("mkfs.xfs") or shutil.which("mkfs.xfs", path="/usr/sbin:/sbin")
    if os.geteuid() != 0 or mkfs is None:
        yield None
        return
    backing, mount = run_dir / "xfs.img", run_dir / "xfs"
    with backing.open("wb") as handle:
        handle.truncate(FS_SIZE)
    subprocess.run([mkfs, "-q", "-m", "reflink=1", str(backing)], check=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(backing), str(mount)], check=True)
    try:
        mount.chmod(0o755)
        yield mount / "versions"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        backing.unlink(missing_ok=True)


# --- Changing 1 % ------------------------------------------------------------------------


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the file's data (SEEK_DATA/SEEK_HOLE): the generated files."""
    found, position = [], 0
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        while position < size:
            try:
                start = os.lseek(file.fileno(), position, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(file.fileno(), start, os.SEEK_HOLE)
            found.append((start, end - start))
            position = end
    return found


def change(path: Path, extents: list[tuple[int, int]], budget: int, rng: random.Random,
           model: str, pool: list[str], segment) -> int:  # fmt: skip
    """Rewrite ``budget`` bytes of the data of ``path`` in place; the bytes written."""
    written = 0
    weights = [length for _, length in extents]
    with path.open("r+b") as file:
        while written < budget:
            if model == "files":
                offset, length = rng.choice(extents)  # a file, whatever its size
                blocks = -(-length // BLOCK)
                take = min(blocks, -(-(budget - written) // BLOCK))
                start = offset + rng.randrange(blocks - take + 1) * BLOCK
            else:
                offset, length = rng.choices(extents, weights)[0]  # a place in the data
                take = min(rng.randint(1, 16), -(-length // BLOCK))
                start = offset + rng.randrange(-(-length // BLOCK) - take + 1) * BLOCK
            kind = rng.choices(("text", "binary", "random"), (0.35, 0.40, 0.20))[0]
            data = segment(rng, pool, kind, take * BLOCK)
            os.pwrite(file.fileno(), data, start)
            written += len(data)
        os.fsync(file.fileno())
    return written


def ranges_match(path: Path, datamap: dict) -> bool:
    """Whether ``path`` holds what the map says: each range's SHA-256, data nowhere else."""
    with path.open("rb") as file:
        for start, end, digest in datamap["ranges"]:
            if hashlib.sha256(os.pread(file.fileno(), end - start, start)).hexdigest() != digest:
                return False
        for start, end in outside(data_extents(path), datamap["ranges"]):
            if any(os.pread(file.fileno(), end - start, start)):
                return False  # data where the map says zeros
    return True


def outside(extents: list[tuple[int, int]], ranges: list) -> Iterator[tuple[int, int]]:
    """The parts of ``extents`` (offset, length) that no range [start, end) covers."""
    index = 0
    for offset, length in extents:
        position, end = offset, offset + length
        while index < len(ranges) and ranges[index][1] <= position:
            index += 1
        probe = index
        while position < end:
            if probe >= len(ranges) or ranges[probe][0] >= end:
                yield position, end
                break
            start, stop = ranges[probe][0], ranges[probe][1]
            if start > position:
                yield position, start
            position = max(position, stop)
            probe += 1


# --- The server's side, in manage.py shell -------------------------------------------------

PROCESS = """
import json, time
from catalogue.models import Version
from catalogue.services.pipeline import version_advance
from catalogue.services.processing import version_job
v = Version.objects.get(image_id={image!r}, number={number})
steps = []
while True:
    t = time.monotonic()
    with version_job(v.pk):
        a = version_advance(version_id=v.pk)
    steps.append([a.step, round(time.monotonic() - t, 3)])
    if not a.more:
        break
print("OUT=" + json.dumps(steps))
"""

STATS = """
import json, os
from catalogue.models import Version
from catalogue.services.datamaps import version_map
from catalogue.storage import get_storage
os.sync()
s = get_storage()
vs = list(Version.objects.filter(image_id={image!r}, number__gt=0).order_by("number"))
files = [(v.image_id, v.number, v.stored_compression) for v in vs]
print("OUT=" + json.dumps({{
    "versions": [{{"number": v.number, "stored_size": v.stored_size, "sha256": v.sha256,
                  "compression": v.stored_compression, "record": s.share_record(*f),
                  "shared": s.shared_bytes(*f), "map": version_map(v).as_json()}}
                 for v, f in zip(vs, files)],
    "held": s.held_bytes(files),
}}))
"""

PRUNE_AND_READ = """
import hashlib, json, os
from catalogue.models import Image, Version
from catalogue.services.codecs import raw_reader
from catalogue.services.lifecycle import versions_prune
from catalogue.storage import get_storage
Image.objects.filter(pk={image!r}).update(keep_versions={keep})
pruned = versions_prune(image_uuid={image!r})
os.sync()
s = get_storage()
good = []
for v in Version.objects.filter(image_id={image!r}, number__gt=0).order_by("number"):
    digest = hashlib.sha256()
    with raw_reader(s.open_read(v.image_id, v.number, v.stored_compression),
                    v.stored_compression, limit=v.size) as raw:
        while chunk := raw.read(4 << 20):
            digest.update(chunk)
    good.append([v.number, digest.hexdigest() == v.sha256])
files = [(v.image_id, v.number, v.stored_compression)
         for v in Version.objects.filter(image_id={image!r}, number__gt=0)]
print("OUT=" + json.dumps({{"pruned": pruned, "read_back": good, "held": s.held_bytes(files)}}))
"""


def shell(baas, code: str) -> object:
    out = subprocess.run(
        [str(baas.repo / ".venv" / "bin" / "python"), "manage.py", "shell", "-c", code],
        cwd=baas.repo, env=baas.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    return json.loads(next(line[4:] for line in lines if line.startswith("OUT=")))


# --- One series -----------------------------------------------------------------------------


def series(baas, image, work: Path, compression: str, model: str, seed: int) -> dict:
    """Ten versions of one image in ``compression``, changed by ``model``; what they hold."""
    status, created = baas.request(
        "POST", f"/api/user/{USERNAME}/image",
        {"name": f"versions-{compression}-{model}", "compression": compression},
    )  # fmt: skip
    if status != 201:
        raise SystemExit(f"creating an image answered {status}: {created}")
    uuid = created["uuid"]
    subprocess.run(["cp", "--sparse=always", "--reflink=never", str(image.raw), str(work)],
                   check=True)  # fmt: skip
    rng = random.Random(seed * 1000 + (model == "scattered"))  # noqa: S311 - test data
    pool = text_pool(random.Random(seed))  # noqa: S311 - test data
    extents = data_extents(work)
    budget = int(image.data * CHANGE)
    uploads, steps, maps_ok = [], [], True
    for index in range(COUNT):
        if index:
            change(work, extents, budget, rng, model, pool, segment)
        sync_all()
        seconds, answer = baas.upload(uuid, work, None, client="sparse")
        uploads.append(seconds)
        steps.append(shell(baas, PROCESS.format(image=uuid, number=answer["version"])))
        log(f"  {compression} {model} v{answer['version']}: upload {seconds:.2f} s, "
            f"steps {steps[-1]}")  # fmt: skip
        stats = shell(baas, STATS.format(image=uuid))
        maps_ok &= ranges_match(work, stats["versions"][-1]["map"])
    stats = shell(baas, STATS.format(image=uuid))
    after = shell(baas, PRUNE_AND_READ.format(image=uuid, keep=COUNT // 2))
    work.unlink()
    return {"uuid": uuid, "stats": stats, "after_prune": after, "uploads": uploads,
            "steps": steps, "maps_ok": maps_ok}  # fmt: skip


def rows_of(result: dict, compression: str, model: str, gate: bool) -> list:
    stats = result["stats"]
    versions = stats["versions"]
    one = versions[0]["stored_size"]
    logical = sum(v["stored_size"] for v in versions)
    held = stats["held"]
    share_s = [t for run in result["steps"] for step, t in run if step == "share"]
    read_ok = all(ok for _, ok in result["after_prune"]["read_back"])
    ok = held / one <= TARGET and result["maps_ok"] and read_ok
    name = f"{COUNT} versions {compression}, 1 % {model}"
    detail = (
        f"held {held / MiB:.0f} MiB, one version {one / MiB:.0f} MiB, each counted whole "
        f"{logical / MiB:.0f} MiB ({logical / one:.2f}x); share step "
        f"{median(share_s) if share_s else 0:.2f} s/version; maps match the uploads: "
        f"{result['maps_ok']}; after pruning to {COUNT // 2}: held "
        f"{result['after_prune']['held'] / MiB:.0f} MiB, each reads back its SHA-256: {read_ok}"
    )
    return [
        Row(f"{name}: held / one (MiB)", held / MiB, one / MiB, held / one,
            f"<= {TARGET}", ok if gate else None, detail,
            {"held": held, "one": one, "logical": logical, "share_seconds": share_s,
             "uploads": result["uploads"], "steps": result["steps"],
             "after_prune": result["after_prune"]}),
        Row(f"  {name}: logical / one", logical / MiB, one / MiB, logical / one, "-", None,
            "what the versions hold without reflinks (ext4, or before this change)"),
    ]  # fmt: skip


def measure_versions(image, run_dir: Path, repo: Path, seed: int, models: list[str]) -> list:
    """The rows of the versions benchmark (or one saying why it was not measured)."""
    with reflink_root(run_dir) as root:
        if root is None:
            return [Row("versions on XFS", None, None, None, f"<= {TARGET}", False,
                        "not measured: needs root and xfsprogs (mkfs.xfs) to make an XFS "
                        "with reflinks, or --workdir on one")]  # fmt: skip
        baas = Baas(root, image.size, repo)
        baas.env.pop("DATABASE_URL", None)  # its own SQLite, beside the main run's database
        baas.database = "SQLite"
        baas.setup()
        baas.start()
        rows = []
        try:
            for model in models:
                for compression in ("none", "zstd"):
                    log(f"versions: {compression}, 1 % {model}, load {load_average()}")
                    result = series(baas, image, run_dir / "work.img", compression, model, seed)
                    rows += rows_of(result, compression, model, gate=model == "files")
                    baas.delete_image(result["uuid"])
        finally:
            baas.stop()
        return rows
