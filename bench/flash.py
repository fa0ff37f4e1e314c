"""Flash benchmark: the agent writes a 6 GiB zstd image onto a file disk, against bmaptool and dd.

Everything is measured in the same run on the same disk, interleaved round by
round (median of ``--repeat``), with absolute seconds and MB/s beside every
ratio. The BAAS figure is a **full deployment**: a throwaway BAAS (gunicorn,
SQLite, DEBUG off; ``bench/catalogue.py``'s ``Baas``) holds the image as a
zstd-stored version, a machine with the ``command`` power driver has a setup
of that image; for each run a deployment is queued, started and powered
(untimed: the power command only writes down the one-time boot token), then
the real ``baas-agent`` process is timed from its start to its exit: check-in,
instructions, data map, download of the data from gunicorn, decompress, write,
verify, fsync, progress, log lines, result. The version is stored as BAAS
stores it: the raw image goes in as an upload leaves it (with its data map),
and the compression job writes it in zstd frames of that map (untimed).

    .venv/bin/python bench/flash.py [--workdir DIR] [--size 6G] [--data 600M]
        [--repeat 3] [--seed 1] [--json out.json] [--keep] [--no-profile]

Baselines (same compressed file, same target directory): ``bmaptool copy
--bmap`` of the ``.zst``, ``bmaptool copy --bmap`` of the raw image, and
``zstd -dc | dd bs=4M iflag=fullblock conv=fsync`` (plus ``conv=sparse,fsync``
for information). It exits 0 once it has measured; a missed target prints FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flash_images import IMAGES, NextVersion

from catalogue import (  # the generator and the throwaway BAAS of catalogue.py
    PYTHON,
    REPO,
    Baas,
    TestImage,
    load_average,
    log,
    mb_s,
    parse_size,
    read_through,
    run,
)

DELTA_LINE = re.compile(r"(\d+) bytes downloaded, (\d+) written, (\d+) zeroed")

AGENT = REPO / ".venv" / "bin" / "baas-agent"
MAC = "52:54:00:be:ec:01"
DISK = "/dev/sda"
NAME = "bench-flash"
CPU_FIELDS = ("ru_utime", "ru_stime")

# Version 0 of ``image`` as an upload leaves it (the raw image, sparse, and its data map),
# then stored as its image asks by the compression job itself (syncback.py's set-up too).
VERSION_ZERO_CODE = """\
path = get_storage().version_path(image.uuid, 0, "none")
path.parent.mkdir(parents=True, exist_ok=True)
try:
    os.link(spec["raw"], path)
except OSError:
    shutil.copyfile(spec["raw"], path)
version = Version.objects.create(
    image=image, number=0, size=spec["size"], sha256=spec["sha256"], virtual_size=spec["size"],
    stored_size=path.stat().st_blocks * 512, stored_compression="none", uploaded_by=owner)
version_map_build(version_id=version.pk)
version_compress(version_id=version.pk)
version.refresh_from_db()
"""
SETUP_CODE = (
    """\
import json, os, shutil
from pathlib import Path
from django.contrib.auth import get_user_model
from catalogue.models import Image, ImageFrozen, ImageSetup, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map_build
from catalogue.storage import get_storage
from flashing.models import MacAddress, Machine, MachineDisk
spec = json.loads(os.environ["BENCH_SPEC"])
owner = get_user_model().objects.get(username="bench")
image = Image.objects.create(name=spec["name"], owner=owner, compression="zstd",
                             target_disk=spec["disk"])
"""
    + VERSION_ZERO_CODE
    + """\
path = get_storage().version_path(image.uuid, 0, version.stored_compression)
setup = ImageSetup.objects.create(name=spec["name"], owner=owner)
ImageFrozen.objects.create(setup=setup, image=image, version=version, sync=False)
# Version 1, the same image with 1 % of its data changed, stored the same way.
following = get_storage().version_path(image.uuid, 1, "none")
try:
    os.link(spec["next_raw"], following)
except OSError:
    shutil.copyfile(spec["next_raw"], following)
version = Version.objects.create(
    image=image, number=1, size=spec["size"], sha256=spec["next_sha256"],
    virtual_size=spec["size"], stored_size=following.stat().st_blocks * 512,
    stored_compression="none", uploaded_by=owner)
version_map_build(version_id=version.pk)
version_compress(version_id=version.pk)
setup = ImageSetup.objects.create(name=spec["name"] + "-next", owner=owner)
ImageFrozen.objects.create(setup=setup, image=image, version=version, sync=False)
machine = Machine.objects.create(name=spec["name"], power_driver="command", power_settings={
    "command": spec["command"], "boot_timeout": 3600, "progress_timeout": 3600})
MacAddress.objects.create(machine=machine, address=spec["mac"])
MachineDisk.objects.create(machine=machine, path=spec["disk"], size=spec["size"])
print("IMAGE=" + str(image.uuid))
print("STORED=" + str(path))
"""
)

DEPLOY_CODE = """\
import os
from catalogue.models import ImageSetup
from flashing.models import Machine
from flashing.services.pipeline import deployment_power, machine_start_next
from flashing.services.queue import queue_deployment
name = os.environ["BENCH_NAME"]
machine = Machine.objects.get(name=name)
setup = ImageSetup.objects.get(name=os.environ.get("BENCH_SETUP", name))
queue_deployment(actor=None, machine=machine, setup=setup, sync=False, lease=None)
deployment = machine_start_next(machine_id=machine.pk)
print("POWER=" + deployment_power(deployment_id=deployment.pk, attempt=deployment.attempt))
print("DEPLOYMENT=" + str(deployment.pk))
"""

STATES_CODE = """\
import json, os
from flashing.models import Deployment
rows = Deployment.objects.filter(machine__name=os.environ["BENCH_NAME"]).order_by("id")
print("STATES=" + json.dumps([[d.pk, d.state, d.failure_reason] for d in rows]))
"""


# --- Rows and targets -------------------------------------------------------------------


@dataclass
class Row:
    key: str
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the agent's CPU seconds, per run
    allocated: int | None = None  # bytes allocated on the target after the run
    note: str = ""

    @property
    def median(self) -> float:
        values = sorted(self.seconds)
        return values[len(values) // 2] if values else float("nan")


@dataclass
class Target:
    name: str
    ratio: float
    op: str  # "<=" or ">="
    limit: float
    aim: bool = False

    @property
    def passed(self) -> bool:
        return self.ratio <= self.limit if self.op == "<=" else self.ratio >= self.limit


# --- The BAAS side ------------------------------------------------------------------------


def shell(baas: Baas, code: str, extra: dict[str, str]) -> dict[str, str]:
    """``manage.py shell -c`` in the BAAS environment; returns its ``KEY=value`` lines."""
    out = run(
        [str(PYTHON), "manage.py", "shell", "-c", code], cwd=baas.repo, env={**baas.env, **extra}
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


class Deployments:
    """The bench machine, its setup of the test image, and one deployment per agent run."""

    def __init__(self, baas: Baas, image: TestImage, following: NextVersion, run_dir: Path):
        self.baas = baas
        self.run_dir = run_dir
        self.token_file = run_dir / "boot-token"
        self.count = 0
        self.last_cpu = 0.0  # CPU seconds of the last agent run
        command = f"printf '%s' \"$BAAS_TOKEN\" > {self.token_file}"
        spec = {
            "name": NAME,
            "disk": DISK,
            "mac": MAC,
            "raw": str(image.raw),
            "size": image.size,
            "sha256": image.sha256,
            "next_raw": str(following.raw),
            "next_sha256": following.sha256,
            "command": command,
        }
        started = time.perf_counter()
        found = shell(baas, SETUP_CODE, {"BENCH_SPEC": json.dumps(spec)})
        self.image_uuid = found["IMAGE"]
        self.stored = Path(found["STORED"])
        log(
            f"version 0 mapped and stored by the compression job in "
            f"{time.perf_counter() - started:.1f} s (untimed): {self.stored.name}, "
            f"{self.stored.stat().st_size / (1 << 20):.0f} MiB (zstd -T0 -3: "
            f"{image.zst.stat().st_size / (1 << 20):.0f} MiB)"
        )

    def start(self, setup: str = NAME) -> str:
        """Queue, start and power a deployment (untimed); returns its one-time boot token."""
        self.token_file.unlink(missing_ok=True)
        found = shell(self.baas, DEPLOY_CODE, {"BENCH_NAME": NAME, "BENCH_SETUP": setup})
        if found.get("POWER") != "powered" or not self.token_file.exists():
            raise SystemExit(f"the deployment was not powered: {found}")
        return self.token_file.read_text().strip()

    def agent_command(self, token: str, target: Path) -> list[str]:
        return [
            str(AGENT),
            "--server",
            self.baas.url(""),
            "--mac",
            MAC,
            "--token",
            token,
            "--disk",
            f"{DISK}={target}",
            "--kernel-cmdline",
            "/dev/null",
        ]

    def flash(
        self,
        target: Path,
        *,
        profile: Path | None = None,
        setup: str = NAME,
        code: Path | None = None,
    ) -> tuple[float, str]:
        """One deployment: the agent process timed from start to exit. (seconds, its log).

        ``code``: a checkout (``--before``) whose agent runs instead of this tree's, by the
        same command (its ``agent`` directory first on ``PYTHONPATH``).
        """
        token = self.start(setup)
        self.count += 1
        log_path = self.run_dir / f"agent-{self.count}.log"
        command = self.agent_command(token, target)
        if profile is not None:
            command = [str(PYTHON), "-m", "cProfile", "-o", str(profile), "-m", "baas_agent"]
            command += self.agent_command(token, target)[1:]
        env = None
        if code is not None:
            env = {**os.environ, "PYTHONPATH": str(code / "agent")}
        os.sync()
        with open(log_path, "wb") as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                status = proc.wait(timeout=3600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The agent's own CPU time (user + system): what a loaded machine does not inflate.
        self.last_cpu = sum(getattr(after, f) - getattr(before, f) for f in CPU_FIELDS)
        text = log_path.read_text(errors="replace")
        if status != 0:
            raise SystemExit(f"the agent exited with {status}:\n{text[-3000:]}")
        return seconds, text

    def states(self) -> list:
        return json.loads(shell(self.baas, STATES_CODE, {"BENCH_NAME": NAME})["STATES"])


# --- Baselines ------------------------------------------------------------------------------


def byte_compile(*checkouts: Path | None) -> None:
    """Byte-compile the agents' packages (untimed), as the management OS ships them.

    Its image holds the agent's ``.pyc`` files (``mgmt_os/check.py``); without
    them, and with ``PYTHONDONTWRITEBYTECODE`` set (as in some shells), each
    agent run would compile its sources again, which no machine does.
    """
    for checkout in checkouts:
        if checkout is not None:
            packages = [checkout / "agent" / "baas_agent", checkout / "diskimage"]
            run([str(PYTHON), "-m", "compileall", "-q", *map(str, packages)])


def timed_cmd(cmd: list[str] | str, *, shell_: bool = False) -> float:
    os.sync()
    start = time.perf_counter()
    if shell_:
        subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True)
    else:
        subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)
    return path


def warm(target: Path, size: int) -> None:
    """Read the target's data once (untimed): it is in the page cache, as a flash left it
    before the agent dropped what it verified (the earlier figures' condition)."""
    from baas_agent.disks import read_target

    for _ in read_target(target, size):
        pass


def cold(target: Path, size: int) -> None:
    """Drop the target from the page cache (untimed): as a machine's disk after a reboot."""
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def check_target(path: Path, size: int, sha256: str, what: str) -> None:
    """The target holds the image (SHA-256 with holes read as zeros, untimed)."""
    from baas_agent.disks import hash_target

    found = path.stat().st_size
    if found != size:
        raise SystemExit(f"{what}: the target is {found} bytes, not {size}")
    if hash_target(path, size) != sha256:
        raise SystemExit(f"{what}: the target does not hold the image")


# --- Phases and profile ------------------------------------------------------------------------


def _drain(chunks) -> None:
    for _ in chunks:
        pass


def _local_chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def _zero_scan(path: Path) -> None:
    from baas_agent.compress import decompressed

    from diskimage.holes import data_runs

    for chunk in decompressed(_local_chunks(path), "zstd"):
        data_runs(chunk)


def _write_ranges(chunks, target: Path, size: int, datamap) -> None:
    from baas_agent.compress import decompressed
    from baas_agent.disks import RangeWriter

    ranges = [(start, end) for start, end, _ in datamap.ranges]
    with RangeWriter(fresh(target), size, ranges) as writer:
        for chunk in decompressed(chunks, "zstd"):
            writer.write(chunk)
        writer.close()


def _land(chunks, target: Path, datamap, medium: bool) -> None:
    """``baas_agent.landing.land`` onto a fresh target; ``medium=False`` writes through the
    page cache and reads back from it (no ``O_DIRECT``, no cache drops)."""
    import baas_agent.landing as landing

    saved = landing.to_medium, landing.drop_cached, landing._Disk.can_go_direct
    if not medium:
        landing.to_medium = lambda fd, offset, length: None
        landing.drop_cached = lambda path: None
        landing._Disk.can_go_direct = lambda self, start, end: False  # type: ignore[method-assign]
    try:
        reason = landing.land(chunks, "zstd", fresh(target), datamap)
    finally:
        landing.to_medium, landing.drop_cached, landing._Disk.can_go_direct = saved
    if reason is not None:
        raise SystemExit(f"landing failed: {reason}")


def _disk_alone(source: Path, target: Path, datamap) -> None:
    """What any flash that checks the medium spends on this disk, with nothing decoded or
    hashed: the map's ranges copied from the (cached) raw image with ``O_DIRECT`` on four
    threads, as the agent lands them, one fsync, then read back with ``O_DIRECT``."""
    import mmap
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    src = os.open(source, os.O_RDONLY)
    fresh(target)
    out = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(out, datamap.size)
    direct = [os.open(target, flags | os.O_DIRECT) for flags in (os.O_WRONLY, os.O_RDONLY)]

    def one(item, write: bool) -> None:
        start, end, _ = item
        if not hasattr(local, "buffer"):
            local.buffer = memoryview(mmap.mmap(-1, 16 << 20))
        view = local.buffer[: end - start]
        if write:
            os.preadv(src, [view], start)
            os.pwritev(direct[0], [view], start)
        else:
            os.preadv(direct[1], [view], start)

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda item: one(item, True), datamap.ranges))
            os.fsync(out)
            list(pool.map(lambda item: one(item, False), datamap.ranges))
    finally:
        for fd in (src, out, *direct):
            os.close(fd)


def phases(baas: Baas, deployments: Deployments, image: TestImage, target: Path) -> dict:
    """The agent's write path taken apart in-process, each phase timed alone (warm cache)."""
    from baas_agent.client import Client
    from baas_agent.compress import decompressed
    from baas_agent.disks import hash_target

    from diskimage.datamap import DataMap
    from diskimage.verify import mismatch

    client = Client(baas.url(""), baas.token)
    url = f"/api/image/{deployments.image_uuid}/0"
    zst = image.zst
    steps = {
        "download of the whole .zst (HTTP from gunicorn only)": lambda: _drain(
            client.download(url)
        ),
        "decompress the whole .zst (local, zstandard)": lambda: _drain(
            decompressed(_local_chunks(zst), "zstd")
        ),
        "decompress the whole .zst + zero-block scan": lambda: _zero_scan(zst),
        "download of the data stream only": lambda: _drain(client.download(f"{url}/data")),
        "data stream: download + decompress": lambda: _drain(
            decompressed(client.download(f"{url}/data"), "zstd")
        ),
        "data stream: download + decompress + write ranges + fsync": lambda: _write_ranges(
            client.download(f"{url}/data"), target, image.size, datamap
        ),
        "land (the agent's write path: decompress, write, read back, BLAKE3), read back "
        "from the medium (O_DIRECT)": lambda: _land(
            client.download(f"{url}/data"), target, datamap, True
        ),
        "land, the same through the page cache, read back from it (no medium)": lambda: _land(
            client.download(f"{url}/data"), target, datamap, False
        ),
        "the disk alone: the ranges written (O_DIRECT), fsynced, read back (O_DIRECT); nothing "
        "decoded or hashed": lambda: _disk_alone(image.raw, target, datamap),
        "verify: hash_target (SEEK_DATA, holes hashed)": lambda: hash_target(target, image.size),
        "verify: data map (ranges hashed in parallel, holes skipped)": lambda: mismatch(
            target, datamap
        ),
    }
    datamap = DataMap.from_json(client.get_json(f"{url}/map"), size=image.size, sha256=image.sha256)
    out: dict[str, float] = {}
    for name, function in steps.items():
        os.sync()
        start = time.perf_counter()
        function()
        out[name] = time.perf_counter() - start
        log(f"  phase {name}: {out[name]:.2f} s")
    target.unlink(missing_ok=True)
    return out


def profile_summary(path: Path, top: int = 12) -> list[str]:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime")
    width = stats.total_tt or 1.0
    rows = []
    for func, (_cc, calls, tottime, cumtime, _callers) in sorted(
        stats.stats.items(), key=lambda item: item[1][2], reverse=True
    )[:top]:
        where = f"{Path(func[0]).name}:{func[1]}({func[2]})"
        rows.append(
            f"{tottime:7.2f} s {100 * tottime / width:5.1f} %  cum {cumtime:7.2f} s  "
            f"{calls:>8} calls  {where}"
        )
    return rows


# --- Main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="default: a new directory in /var/tmp")
    parser.add_argument("--size", default="6G")
    parser.add_argument("--data", default="600M")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep test data, BAAS and targets")
    parser.add_argument("--no-profile", action="store_true", help="skip phases and cProfile")
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of the code to compare with (e.g. `git archive main agent diskimage`"
        " unpacked): its agent's full flash, re-flash and delta run in every round too, "
        "interleaved",
    )
    parser.add_argument(
        "--images",
        default="generated,ext4",
        help="which test images, in order: generated (catalogue.py's), ext4 (mkfs.ext4 -d "
        "of random files); default both",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("zstd", "bmaptool", "dd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    made_workdir = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="baas-bench-flash-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / f"run-{os.getpid()}"
    run_dir.mkdir()
    size, data = parse_size(args.size), parse_size(args.data)
    kinds = [kind.strip() for kind in args.images.split(",") if kind.strip()]
    unknown = set(kinds) - set(IMAGES)
    if unknown:
        raise SystemExit(f"unknown --images {sorted(unknown)}: {sorted(IMAGES)}")
    payload: dict = {}
    made: list[Path] = []
    try:
        for kind in kinds:
            image, following = IMAGES[kind](workdir / "data", size, data, args.seed)
            made += [image.raw, image.zst, following.raw]
            payload[kind] = measure_image(kind, image, following, run_dir / kind, args)
    finally:
        if args.json:
            args.json.write_text(json.dumps(payload, indent=2))
            log(f"figures written to {args.json}")
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            if made_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                for path in made:
                    path.unlink(missing_ok=True)
                    path.with_suffix(".json").unlink(missing_ok=True)
    return 0


def measure_image(
    kind: str, image: TestImage, following: NextVersion, run_dir: Path, args: argparse.Namespace
) -> dict:
    """A BAAS of its own for one test image: every measurement, then the report."""
    run_dir.mkdir(parents=True)
    baas = Baas(run_dir, image.size)
    try:
        baas.env["BAAS_PUBLIC_URL"] = baas.url("")
        log(f"[{kind}] BAAS in {run_dir} ({baas.database}), gunicorn on {baas.url('')}")
        baas.setup()
        baas.start()
        results = measure(baas, image, following, run_dir, args)
        return report(kind, results, image, following, args)
    finally:
        baas.stop()


def measure(
    baas: Baas, image: TestImage, following: NextVersion, run_dir: Path, args: argparse.Namespace
) -> dict:
    deployments = Deployments(baas, image, following, run_dir)
    byte_compile(REPO, args.before)
    bmap = run_dir / "disk.bmap"
    start = time.perf_counter()
    run(["bmaptool", "create", "-o", str(bmap), str(image.raw)])
    bmap_create = time.perf_counter() - start
    log(f"bmaptool create: {bmap_create:.2f} s (once, untimed in the copies)")
    target = run_dir / "target.img"
    rows = {
        "baas": Row("baas", "BAAS agent: full deployment (fresh target)"),
        "reflash": Row("reflash", "BAAS agent: re-flash, image already on disk"),
        "reflash_cold": Row("reflash_cold", "BAAS agent: re-flash, target not in the cache"),
        "delta": Row("delta", "BAAS agent: re-flash to the next version (1 % changed)"),
        **(
            {
                "before_baas": Row("before_baas", "--before agent: full deployment"),
                "before_reflash": Row("before_reflash", "--before agent: re-flash, in the cache"),
                "before_delta": Row("before_delta", "--before agent: delta re-flash (1 % changed)"),
            }
            if args.before
            else {}
        ),
        "bmap_zst": Row("bmap_zst", "bmaptool copy --bmap image.zst"),
        "bmap_raw": Row("bmap_raw", "bmaptool copy --bmap image (raw, local)"),
        "dd": Row("dd", "zstd -dc | dd bs=4M iflag=fullblock conv=fsync"),
        "dd_sparse": Row("dd_sparse", "zstd -dc | dd bs=4M iflag=fullblock conv=sparse,fsync"),
    }
    zst, raw = str(image.zst), str(image.raw)
    baselines = {
        "bmap_zst": ["bmaptool", "copy", "--bmap", str(bmap), zst, str(target)],
        "bmap_raw": ["bmaptool", "copy", "--bmap", str(bmap), raw, str(target)],
        "dd": f"zstd -dc {zst} | dd of={target} bs=4M iflag=fullblock conv=fsync status=none",
        "dd_sparse": f"zstd -dc {zst} | dd of={target} bs=4M iflag=fullblock "
        "conv=sparse,fsync status=none",
    }
    log("warming the page cache: the .zst, the raw image, the stored version (one read each)")
    for path in (image.zst, image.raw, deployments.stored):
        read_through(path)
    loads = [load_average()]
    log(f"load average {loads[0]}")
    agent_logs: list[str] = []
    deltas: list[tuple[int, int, int]] = []
    for round_ in range(args.repeat):
        log(f"round {round_ + 1}/{args.repeat} (load {load_average()})")
        agent_logs.append(
            one_round(deployments, target, image, following, baselines, rows, deltas, round_ == 0)
        )
        if args.before:
            before_round(deployments, target, image, rows, args.before, round_)
        loads.append(load_average())
    states = deployments.states()
    bad = [s for s in states if s[1] != "done"]
    if bad:
        raise SystemExit(f"deployments not done: {bad}")
    log(f"{len(states)} deployments, all done on the server")
    extra: dict = {
        "bmap_create_s": bmap_create,
        "loads": loads,
        "deployments": len(states),
        "delta_bytes": deltas,  # (downloaded, written, zeroed) of each delta re-flash
    }
    if not args.no_profile:
        log("phases of the write path, in-process, one run each:")
        extra["phases_s"] = phases(baas, deployments, image, run_dir / "phase.img")
        extra.update(profile_agent(deployments, target, run_dir))
        loads.append(load_average())
    fresh(target)
    return {"rows": rows, "extra": extra, "agent_log": agent_logs[-1][-1500:]}


def one_round(
    deployments: Deployments,
    target: Path,
    image: TestImage,
    following: NextVersion,
    baselines: dict,
    rows: dict[str, Row],
    deltas: list[tuple[int, int, int]],
    check: bool,
) -> str:
    """BAAS full flash, re-flash, delta re-flash, then each baseline; returns the full
    flash's log."""
    seconds, text = deployments.flash(fresh(target))
    if "already there" in text:
        raise SystemExit("a fresh target was reported as already holding the image")
    rows["baas"].seconds.append(seconds)
    rows["baas"].cpu.append(deployments.last_cpu)
    rows["baas"].allocated = allocated(target)
    if check:
        check_target(target, image.size, image.sha256, "BAAS")
    log(f"  BAAS full flash   {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    for key, cache in (("reflash", warm), ("reflash_cold", cold)):
        cache(target, image.size)
        seconds, again = deployments.flash(target)
        if "already there" not in again:
            raise SystemExit(f"the re-flash rewrote the image:\n{again[-2000:]}")
        rows[key].seconds.append(seconds)
        rows[key].cpu.append(deployments.last_cpu)
        rows[key].allocated = allocated(target)
        log(f"  BAAS {key:<13}{seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    warm(target, image.size)
    seconds, text_delta = deployments.flash(target, setup=NAME + "-next")
    found = DELTA_LINE.search(text_delta)
    if "delta from v0" not in text_delta or found is None:
        raise SystemExit(f"the re-flash to the next version was no delta:\n{text_delta[-2000:]}")
    rows["delta"].seconds.append(seconds)
    rows["delta"].cpu.append(deployments.last_cpu)
    rows["delta"].allocated = allocated(target)
    deltas.append((int(found[1]), int(found[2]), int(found[3])))
    if check:
        check_target(target, image.size, following.sha256, "BAAS delta")
    log(f"  BAAS delta        {seconds:7.2f} s  (downloaded, written, zeroed: {deltas[-1]})")
    for key, cmd in baselines.items():
        fresh(target)
        seconds = timed_cmd(cmd, shell_=isinstance(cmd, str))
        rows[key].seconds.append(seconds)
        rows[key].allocated = allocated(target)
        if check:
            check_target(target, image.size, image.sha256, key)
        log(f"  {key:<17} {seconds:7.2f} s")
    return text


def before_round(
    deployments: Deployments, target: Path, image: TestImage, rows: dict, code: Path, round_: int
) -> None:
    """The ``--before`` agent's full flash, re-flash and delta (target warm), as ``one_round``'s."""
    seconds, text = deployments.flash(fresh(target), code=code)
    if "already there" in text:
        raise SystemExit("a fresh target was reported as already holding the image")
    rows["before_baas"].seconds.append(seconds)
    rows["before_baas"].cpu.append(deployments.last_cpu)
    if round_ == 0:
        check_target(target, image.size, image.sha256, "--before BAAS")
    log(f"  before full flash {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    warm(target, image.size)
    seconds, again = deployments.flash(target, code=code)
    if "already there" not in again:
        raise SystemExit(f"the --before re-flash rewrote the image:\n{again[-2000:]}")
    rows["before_reflash"].seconds.append(seconds)
    rows["before_reflash"].cpu.append(deployments.last_cpu)
    log(f"  before reflash    {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")
    warm(target, image.size)
    seconds, text = deployments.flash(target, setup=NAME + "-next", code=code)
    if "delta from v0" not in text:
        raise SystemExit(f"the --before re-flash to the next version was no delta:\n{text[-2000:]}")
    rows["before_delta"].seconds.append(seconds)
    rows["before_delta"].cpu.append(deployments.last_cpu)
    log(f"  before delta      {seconds:7.2f} s  (cpu {deployments.last_cpu:.2f} s)")


def profile_agent(deployments: Deployments, target: Path, run_dir: Path) -> dict:
    """The agent under cProfile: a full flash onto a fresh target, then a re-flash."""
    out = {}
    fresh(target)
    for what in ("full", "reflash"):
        path = run_dir / f"{what}.prof"
        seconds, _ = deployments.flash(target, profile=path)
        out[f"profile_{what}"] = {"seconds": seconds, "top": profile_summary(path)}
        log(f"cProfile of the agent, {what} ({seconds:.1f} s under the profiler)")
    return out


def targets(rows: dict[str, Row], extra: dict, following: NextVersion) -> list[Target]:
    m = {key: row.median for key, row in rows.items()}
    downloaded = max(d for d, _, _ in extra["delta_bytes"])
    before = []
    if "before_baas" in m:
        before = [
            Target(
                "--before / bmaptool copy (raw, local)", m["before_baas"] / m["bmap_raw"], "<=", 1.0
            ),
            Target("--before (zstd -dc | dd) / BAAS", m["dd"] / m["before_baas"], ">=", 5.0),
            Target(
                "--before re-flash / full flash", m["before_reflash"] / m["before_baas"], "<=", 0.1
            ),
            Target("--before delta / full flash", m["before_delta"] / m["before_baas"], "<=", 0.25),
        ]
    return [
        *before,
        Target("BAAS / bmaptool copy (compressed)", m["baas"] / m["bmap_zst"], "<=", 1.0),
        Target("BAAS / bmaptool copy (raw, local)", m["baas"] / m["bmap_raw"], "<=", 1.0),
        Target("(zstd -dc | dd) / BAAS", m["dd"] / m["baas"], ">=", 5.0),
        Target("re-flash / full flash", m["reflash"] / m["baas"], "<=", 0.1),
        Target("delta re-flash / full flash", m["delta"] / m["baas"], "<=", 0.25),
        Target("delta: downloaded / changed bytes", downloaded / following.changed, "<=", 1.1),
    ]


def print_floors(rows: dict[str, Row], phases_s: dict[str, float]) -> None:
    """What this machine's disk and cores allow, whatever the agent does: the floors under
    the raw-bmaptool and re-flash ratios (each an in-process phase of one run)."""
    found = {key: v for key in ("the disk", "verify: data") for k, v in phases_s.items() if
             k.startswith(key)}  # fmt: skip
    if "the disk" in found:
        print(
            f"The disk alone / bmaptool copy (raw, local): "
            f"{found['the disk'] / rows['bmap_raw'].median:.2f} (a floor: above 1.0, no flash"
            " that reads its writes back from the medium meets the raw bmaptool target on this"
            " disk; bmaptool writes, syncs and reads nothing back)"
        )
    if "verify: data" in found:
        print(
            f"The check alone / full flash: {found['verify: data'] / rows['baas'].median:.2f} (a"
            " floor of the re-flash ratios: hashing the data an unchanged disk keeps, on every"
            " core, before the agent's start-up, check-in and result)"
        )


def report(
    kind: str, results: dict, image: TestImage, following: NextVersion, args: argparse.Namespace
) -> dict:
    rows: dict[str, Row] = results["rows"]
    extra = results["extra"]
    print()
    print(f"== {kind} image ==")
    print(
        f"Image: {image.size / 2**30:.1f} GiB raw ({image.size / 1e9:.2f} GB), "
        f"{image.data / 2**20:.0f} MiB of non-zero 4 KiB blocks in {image.extents} extents, "
        f"zstd -T0 -3: {image.zst_size / 2**20:.0f} MiB. Seed {image.seed}."
    )
    written = sorted(w for _, w, _ in extra["delta_bytes"])
    print(
        f"Next version: {following.files} files rewritten, {following.changed / 2**20:.2f} MiB "
        f"of 4 KiB blocks changed ({100 * following.changed / image.data:.2f} % of the data); "
        f"the delta re-flash downloaded {[d for d, _, _ in extra['delta_bytes']]} bytes, wrote "
        f"{written[-1] / 2**20:.2f} MiB of changed ranges, zeroed "
        f"{max(z for _, _, z in extra['delta_bytes'])} bytes."
    )
    print(
        "BAAS: full deployment through a throwaway BAAS (gunicorn + SQLite), the real "
        "baas-agent process timed from start to exit."
    )
    print(
        f"Cache: warm (each input read once before timing, nothing dropped); os.sync() "
        f"before each timing. Median of {args.repeat}, interleaved rounds."
    )
    print(f"Load average (1/5/15 min) before and after each round: {' | '.join(extra['loads'])}")
    print()
    print(f"{'measurement':<55} {'median s':>9} {'MB/s':>8} {'alloc MiB':>10}  runs")
    for row in rows.values():
        runs = " ".join(f"{s:.2f}" for s in row.seconds)
        alloc = f"{row.allocated / 2**20:.0f}" if row.allocated is not None else "-"
        print(
            f"{row.name:<55} {row.median:9.2f} {mb_s(image.size, row.median):8.0f} "
            f"{alloc:>10}  {runs}"
        )
    print(f"(MB/s: raw image size / time; bmaptool create, once: {extra['bmap_create_s']:.2f} s)")
    print("The agent's CPU time (user + system, s), per run:")
    for row in rows.values():
        if row.cpu:
            print(f"  {row.name:<55} {' '.join(f'{c:.2f}' for c in row.cpu)}")
    print()
    checks = targets(rows, extra, following)
    for check in checks:
        verdict = "PASS" if check.passed else "FAIL  <<<"
        aim = " (aim)" if check.aim else ""
        print(
            f"{check.name:<40} {check.ratio:7.2f}  target {check.op} {check.limit}{aim}  {verdict}"
        )
    if "phases_s" in extra:
        print()
        print("Phases of the agent's write path (in-process, one run each, warm cache):")
        for name, seconds in extra["phases_s"].items():
            print(f"  {seconds:7.2f} s  {mb_s(image.size, seconds):6.0f} MB/s  {name}")
        print_floors(rows, extra["phases_s"])
        print("(A full flash hashes its stream on a second thread, which cProfile does not show.)")
        for what in ("full", "reflash"):
            prof = extra[f"profile_{what}"]
            head = f"cProfile of baas-agent, {what} ({prof['seconds']:.1f} s under the profiler)"
            print(f"{head}, main thread only, top by tottime:")
            for line in prof["top"]:
                print(f"  {line}")
    return {
        "image": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(image).items()},
        "next": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(following).items()},
        "rows": {
            key: {**asdict(row), "median": row.median, "mb_s": mb_s(image.size, row.median)}
            for key, row in rows.items()
        },
        "targets": [{**asdict(t), "passed": t.passed} for t in checks],
        "extra": extra,
        "method": "full deployment via throwaway BAAS + baas-agent process",
    }


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
