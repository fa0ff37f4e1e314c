"""Sync-back benchmark: a 6 GiB user data disk with 1 % of its data changed comes back.

The agent brings the disk back as its changes against the version it was
flashed with (a delta upload, ``agent/baas_agent/changes.py``) and, in the same
run, interleaved, whole as before (``BAAS_AGENT_WHOLE_SYNC=1``: the disk's
SHA-256, then the whole disk zstd-compressed, decoded and hashed by the
server). Both are full deployments, timed like ``bench/flash.py``'s: a
throwaway BAAS (``bench/_lib/baas.py``'s ``Baas``: gunicorn, SQLite, DEBUG
off) holds the image as a version stored as ``--compression`` says (zstd:
framed by the compression job, untimed), the machine's disk record says the disk holds version 0, a
sync-only deployment is queued and powered (untimed), and the real
``baas-agent`` process is timed from its start to its exit — check-in,
instructions, finding the changes (or hashing the disk), the upload, the
server composing and committing the new version, the result.

    .venv/bin/python bench/syncback.py [--workdir DIR] [--size 6G] [--data 600M]
        [--changed 0.01] [--repeat 3] [--seed 1] [--json out.json] [--keep] [--repo DIR]

The changes: ``--changed`` of the image's data bytes, in pieces of 4 KiB to
256 KiB (files rewritten in place, 80 % of the bytes) and new data where the
disk held zeros (new files, 20 %), from the seed. Changed bytes are counted
the way the delta's promise is stated: 4 KiB blocks that differ from the
base. Bytes sent are the server's own count (the audit record of the delta).
Between runs the disk record is set back to version 0 and the new version is
deleted (untimed), so every run syncs the same changes against the same base.

Each delta run's phases come from the agent's log: mapping the disk, fetching the
base's block hashes (kept since the base was stored: ``catalogue.services.rangehashes``),
comparing, and the upload — the delta sent, the server composing the new version from the
base's stored data and committing it. ``--repo`` runs another checkout's server (the
same bench against an older one, for before/after).

Targets: sync-back <= 0.2 x a whole sync-back in every round (the worst round's ratio, not
the median's); bytes sent <= 1.1 x changed bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _lib.baas import Baas
from _lib.deployments import AGENT, DISK, MAC, VERSION_ZERO_CODE, shell
from _lib.flash_report import Row, Target
from _lib.testimage import TestImage, test_image
from _lib.util import REPO, load_average, log, parse_size, read_through

NAME = "bench-sync"
BLOCK = 4096

SETUP_CODE = (
    """\
import json, os, shutil
from django.contrib.auth import get_user_model
from django.utils import timezone
from catalogue.models import Image, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map_build
from catalogue.storage import get_storage
from flashing.models import DiskContent, MacAddress, Machine, MachineDisk
spec = json.loads(os.environ["BENCH_SPEC"])
owner = get_user_model().objects.get(username="bench")
image = Image.objects.create(name=spec["name"], owner=owner, compression=spec["compression"],
                             type="user_data", target_disk=spec["disk"])
"""
    + VERSION_ZERO_CODE
    + """\
machine = Machine.objects.create(name=spec["name"], power_driver="command", power_settings={
    "command": spec["command"], "boot_timeout": 3600, "progress_timeout": 3600})
MacAddress.objects.create(machine=machine, address=spec["mac"])
MachineDisk.objects.create(machine=machine, path=spec["disk"], size=spec["size"])
DiskContent.objects.create(machine=machine, disk=spec["disk"], image=image, version=version,
                           version_number=0, sync=True, written_at=timezone.now())
print("IMAGE=" + str(image.uuid))
print("STORED=" + str(get_storage().version_path(image.uuid, 0, version.stored_compression)))
"""
)

# The disk holds version 0 again; versions made by earlier runs go (untimed).
RESET_CODE = """\
import os
from catalogue.models import Image, Version
from catalogue.storage import get_storage
from flashing.models import DiskContent
image = Image.objects.get(name=os.environ["BENCH_NAME"])
for version in Version.objects.filter(image=image, number__gt=0):
    get_storage().delete_version(image.uuid, version.number, version.stored_compression)
    get_storage().delete_map(image.uuid, version.number)
    version.delete()
base = Version.objects.get(image=image, number=0)
DiskContent.objects.filter(image=image).update(version=base, version_number=0)
"""

SYNC_CODE = """\
import os
from flashing.models import Machine
from flashing.services.pipeline import deployment_power, machine_start_next
from flashing.services.queue import queue_deployment
machine = Machine.objects.get(name=os.environ["BENCH_NAME"])
queue_deployment(actor=None, machine=machine, setup=None, sync=True, lease=None)
deployment = machine_start_next(machine_id=machine.pk)
print("POWER=" + deployment_power(deployment_id=deployment.pk, attempt=deployment.attempt))
"""

RESULT_CODE = """\
import json, os
from accounts.models import AuditEvent
from catalogue.models import Image, Version
from catalogue.services.digests import version_digest_ensure
from flashing.models import Deployment
image = Image.objects.get(name=os.environ["BENCH_NAME"])
version = Version.objects.filter(image=image, number__gt=0).order_by("-number").first()
last = Deployment.objects.filter(machine__name=os.environ["BENCH_NAME"]).order_by("-id").first()
out = {"state": last.state, "reason": last.failure_reason, "version": None}
if version is not None:
    event = AuditEvent.objects.filter(action="version.delta", target_id=str(version.pk)).first()
    import time
    started = time.perf_counter()
    sha256 = version_digest_ensure(version)
    out.update(version=version.number, based_on=version.based_on, sha256=sha256,
               digest_job_s=time.perf_counter() - started,
               delta_bytes=event.data["delta_bytes"] if event else None)
print("RESULT=" + json.dumps(out))
"""


def make_changes(image: TestImage, disk: Path, share: float, seed: int) -> tuple[int, str]:
    """Write ``share`` of the image's data bytes as changes onto ``disk`` (a copy of the
    image); returns the changed bytes (4 KiB blocks that differ) and the disk's SHA-256."""
    rng = random.Random(seed * 7919 + 17)  # noqa: S311 - test data, not secrets
    fd = os.open(disk, os.O_RDWR)
    try:
        extents = _data_extents(fd, image.size)
        budget = int(image.data * share)
        changed: set[int] = set()
        while len(changed) * BLOCK < budget:
            blocks = rng.randint(1, 64)
            if rng.random() < 0.8:  # a file rewritten in place
                start, end = rng.choice(extents)
                first = rng.randrange(start // BLOCK, max(start // BLOCK + 1, end // BLOCK))
            else:  # a new file where the disk held zeros
                first = rng.randrange(0, image.size // BLOCK - blocks)
            blocks = min(blocks, (budget - len(changed) * BLOCK) // BLOCK + 1)
            blocks = min(blocks, image.size // BLOCK - first)
            os.pwrite(fd, rng.randbytes(blocks * BLOCK), first * BLOCK)
            changed.update(range(first, first + blocks))
        os.fsync(fd)
    finally:
        os.close(fd)
    sha256 = subprocess.run(
        ["sha256sum", str(disk)], check=True, capture_output=True, text=True
    ).stdout.split()[0]
    return len(changed) * BLOCK, sha256


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    extents, position = [], 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end))
        position = end
    return extents


def sync_once(baas: Baas, run_dir: Path, disk: Path, *, whole: bool, count: int) -> float:
    shell(baas, RESET_CODE, {"BENCH_NAME": NAME})
    token_file = run_dir / "boot-token"
    token_file.unlink(missing_ok=True)
    found = shell(baas, SYNC_CODE, {"BENCH_NAME": NAME})
    if found.get("POWER") != "powered" or not token_file.exists():
        raise SystemExit(f"the deployment was not powered: {found}")
    command = [
        str(AGENT), "--server", baas.url(""), "--mac", MAC, "--token",
        token_file.read_text().strip(), "--disk", f"{DISK}={disk}", "--kernel-cmdline", "/dev/null",
    ]  # fmt: skip
    env = {**os.environ, **({"BAAS_AGENT_WHOLE_SYNC": "1"} if whole else {})}
    log_path = run_dir / f"agent-{count}.log"
    os.sync()
    with open(log_path, "wb") as out:
        runs_from = datetime.datetime.now()  # local time, as the agent logs
        start = time.perf_counter()
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the agent exited with {code}:\n{log_path.read_text()[-3000:]}")
    STARTED[log_path] = runs_from
    return seconds


# The agent's account of a delta: how long it took to map the disk, fetch the base's block
# hashes and compare; the upload (the delta sent, the server composing and committing the
# new version) is the time from that line to the next.
DELTA_LINE = re.compile(
    r"^(\S+ \S+) INFO .*sending a \d+-byte delta .*disk mapped in ([\d.]+) s, "
    r"block hashes fetched in ([\d.]+) s, compared in ([\d.]+) s"
)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


STARTED: dict[Path, datetime.datetime] = {}  # when each agent run started, by its log


def delta_phases(log_path: Path) -> dict[str, float]:
    """The delta's phases from the agent's log (empty if it logged none); ``start``: from
    the agent's start to its first line (start-up, check-in, instructions)."""
    lines = log_path.read_text(errors="replace").splitlines()
    first = next((m for m in map(STAMP.match, lines) if m), None)
    start = {}
    if first is not None and log_path in STARTED:
        start = {"start": (_stamp(first[1]) - STARTED[log_path]).total_seconds()}
    for at, line in enumerate(lines):
        found = DELTA_LINE.match(line)
        if found is None:
            continue
        phases = {**start, "map": float(found[2]), "hashes": float(found[3])}
        phases["compare"] = float(found[4])
        later = next((m for m in map(STAMP.match, lines[at + 1 :]) if m), None)
        if later is not None:
            phases["upload"] = (_stamp(later[1]) - _stamp(found[1])).total_seconds()
        return phases
    return {}


def _stamp(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")


def result(baas: Baas) -> dict:
    try:
        return json.loads(shell(baas, RESULT_CODE, {"BENCH_NAME": NAME})["RESULT"])
    except subprocess.CalledProcessError as exc:  # say why, not only that it failed
        raise SystemExit(f"reading the result failed:\n{(exc.stderr or '')[-3000:]}") from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="default: a new directory in /var/tmp")
    parser.add_argument("--size", default="6G")
    parser.add_argument("--data", default="600M")
    parser.add_argument("--changed", type=float, default=0.01, help="share of the data changed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the BAAS checkout to run (default: this one)"
    )
    parser.add_argument(
        "--compression", default="zstd", choices=["zstd", "none"], help="the image's storage"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    made = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="baas-bench-sync-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / f"run-{os.getpid()}"
    run_dir.mkdir()
    baas: Baas | None = None
    try:
        image = test_image(
            workdir / "data", parse_size(args.size), parse_size(args.data), args.seed
        )
        repo = args.repo.resolve()
        baas = Baas(run_dir, image.size, repo)
        baas.env["PYTHONPATH"] = os.pathsep.join(str(repo / d) for d in ("", "agent", "cli"))
        baas.env["BAAS_PUBLIC_URL"] = baas.url("")
        baas.setup()
        baas.start()
        measure(baas, image, run_dir, args)
    finally:
        if baas is not None:
            baas.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
            if made:
                shutil.rmtree(workdir, ignore_errors=True)
    return 0


def measure(baas: Baas, image: TestImage, run_dir: Path, args: argparse.Namespace) -> None:
    command = f"printf '%s' \"$BAAS_TOKEN\" > {run_dir / 'boot-token'}"
    spec = {"name": NAME, "disk": DISK, "mac": MAC, "raw": str(image.raw), "size": image.size,
            "sha256": image.sha256, "command": command,
            "compression": args.compression}  # fmt: skip
    found = shell(baas, SETUP_CODE, {"BENCH_SPEC": json.dumps(spec)})
    disk = run_dir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image.raw), str(disk)], check=True)
    changed, sha256 = make_changes(image, disk, args.changed, args.seed)
    log(f"{changed / 2**20:.2f} MiB changed ({changed / image.data:.2%} of the data)")
    for path in (Path(found["STORED"]), disk):
        read_through(path)
    runs = Runs()
    runs.loads.append(load_average())
    count = 0
    for round_ in range(args.repeat):
        for key in ("delta", "whole") if round_ % 2 == 0 else ("whole", "delta"):
            count += 1
            seconds = sync_once(baas, run_dir, disk, whole=key == "whole", count=count)
            outcome = result(baas)
            if outcome["state"] != "done" or outcome["sha256"] != sha256:
                raise SystemExit(f"the sync-back did not bring the disk back: {outcome}")
            if key == "delta":
                if outcome["based_on"] != 0 or outcome["delta_bytes"] is None:
                    raise SystemExit(f"the agent did not send a delta: {outcome}")
                outcome["phases"] = delta_phases(run_dir / f"agent-{count}.log")
                runs.phases.append(outcome["phases"])
                runs.sent.append(outcome["delta_bytes"])
                runs.digest_jobs.append(outcome["digest_job_s"])
            runs.rows[key].seconds.append(seconds)
            log(f"  {key:<6} {seconds:7.2f} s  {json.dumps(outcome)}")
        runs.loads.append(load_average())
    report(runs, image, changed, args)


@dataclass
class Runs:
    rows: dict[str, Row] = field(
        default_factory=lambda: {
            "delta": Row("delta", "sync-back, the changes (delta)"),
            "whole": Row("whole", "sync-back, the whole disk (zstd, as before)"),
        }
    )
    sent: list[int] = field(default_factory=list)
    digest_jobs: list[float] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)


def report(runs: Runs, image: TestImage, changed: int, args: argparse.Namespace) -> None:
    """Print the figures; the ratio target holds only if it holds in every round."""
    delta, whole = runs.rows["delta"], runs.rows["whole"]
    rounds = [d / w for d, w in zip(delta.seconds, whole.seconds, strict=True)]
    checks = [
        Target("sync-back (delta) / whole, worst round", max(rounds), "<=", 0.2),
        Target("bytes sent / changed bytes", max(runs.sent) / changed, "<=", 1.1),
    ]
    print()
    print(
        f"Image {image.size / 2**30:.1f} GiB, {image.data / 2**20:.0f} MiB of data in "
        f"{image.extents} extents; {changed / 2**20:.2f} MiB changed; base stored "
        f"{args.compression} (zstd: in frames). Median of {args.repeat}, interleaved."
    )
    print(f"Load (1/5/15 min) before and after each round: {' | '.join(runs.loads)}")
    for row in runs.rows.values():
        times = " ".join(f"{s:.2f}" for s in row.seconds)
        print(f"{row.name:<48} {row.median:7.2f} s   runs {times}")
    print(f"delta / whole by round: {' '.join(f'{r:.3f}' for r in rounds)}")
    print(f"bytes sent by the delta (server's count): {max(runs.sent)} for {changed} changed")
    print(f"(info) the delta version's SHA-256, left to its job: {max(runs.digest_jobs):.2f} s")
    for name in ("start", "map", "hashes", "compare", "upload"):
        times = " ".join(f"{p[name]:.2f}" if name in p else "-" for p in runs.phases)
        print(f"(info) delta: {name:<8} (agent's log) runs {times} s")
    for check in checks:
        verdict = "PASS" if check.passed else "FAIL  <<<"
        print(f"{check.name:<40} {check.ratio:7.3f}  target {check.op} {check.limit}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": {k: {"seconds": r.seconds, "median": r.median} for k, r in runs.rows.items()},
            "rounds": rounds, "changed": changed, "sent": runs.sent,
            "digest_job_s": runs.digest_jobs, "loads": runs.loads, "phases": runs.phases,
            "targets": [{"name": c.name, "ratio": c.ratio, "passed": c.passed} for c in checks],
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
