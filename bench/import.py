"""Import benchmark: a registry image imported by BAAS against the same tools run by hand.

The baseline, measured in the same run on the same disk and the same image, is
what an administrator would type: ``skopeo copy`` into an OCI layout, ``umoci
unpack --rootless`` and ``mke2fs -t ext4 -d`` of the root filesystem. BAAS's
import (``imports.services.jobs.import_run``, the worker's part, run here in
process) does that and more: it resolves the manifest, reads every layer for
hostile entries, sets owners, and stores the result through the catalogue's
upload path (data map and SHA-256 while it streams). Target: ≤ 1.2x the baseline.

The script starts Debian's ``docker-registry`` on 127.0.0.1, builds a test image
of ``--size`` bytes of files in two layers (text, half-zero binaries, random
bytes; a whiteout in the second) deterministically from ``--seed``, pushes it,
and builds its own throwaway BAAS (SQLite, a fresh image root) in the work
directory, removed at the end unless ``--keep``.

    .venv/bin/python bench/import.py [--size 256M] [--repeat 3] [--seed 1]
        [--workdir DIR] [--keep] [--against CHECKOUT]

Each BAAS runs in a process of its own (its checkout's interpreter, its own
database and image root), started once; each run prints the time of every step
of the job, from its log. ``--against`` times another checkout of BAAS (with its
``.venv``) in the same runs, interleaved: before and after a change.
It exits 0 once it has measured; a missed target is printed as FAIL.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
TARGET = 1.2


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- The test image ------------------------------------------------------------------


def file_bytes(rng: random.Random, size: int) -> bytes:
    kind = rng.random()
    if kind < 0.5:  # text: configs, logs
        words = [b"baas", b"kernel", b"config", b"value=1", b"\n", b"# comment", b"/usr/lib"]
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words) + b" "
        return bytes(out[:size])
    if kind < 0.8:  # binaries: half zeros
        half = size // 2
        return rng.randbytes(half) + bytes(size - half)
    return rng.randbytes(size)  # already compressed


def layer(entries: list[tuple[str, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_layers(size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    dirs = [f"usr/lib/pkg{i}" for i in range(40)]
    base: list[tuple[str, bytes | None]] = [("usr", None), ("usr/lib", None)]
    base += [(d, None) for d in dirs]
    total, n = 0, 0
    while total < size:
        # mostly small files, a few large ones
        length = rng.choice([rng.randint(200, 16_000)] * 8 + [rng.randint(1, 8) * MiB])
        length = min(length, size - total) or 1
        base.append((f"{rng.choice(dirs)}/f{n}", file_bytes(rng, length)))
        total, n = total + length, n + 1
    top = [("usr", None), ("usr/lib", None), ("usr/lib/pkg0", None)]
    top += [("usr/lib/pkg0/.wh.f0", b""), ("etc", None), ("etc/bench", b"on top\n")]
    return [layer(base), layer(top)]


def write_layout(path: Path, layers: list[bytes]) -> None:
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
    layer_descs = [
        blob(
            gzip.compress(t, compresslevel=6, mtime=0),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
        for t in layers
    ]
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": layer_descs,
    }
    desc = blob(json.dumps(manifest).encode(), manifest["mediaType"])
    desc["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))


# --- The registry ---------------------------------------------------------------------


def start_registry(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(["docker-registry", "serve", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("docker-registry did not start")


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


# --- The two contenders ---------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time (user and system) of this process and of its children that ended."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def by_hand(reference: str, work: Path, size: int) -> tuple[float, float]:
    """skopeo copy + umoci unpack + mke2fs -d, as typed at a shell: seconds, CPU seconds."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    cpu = cpu_seconds()
    started = time.monotonic()
    run(
        "skopeo", "copy", "--quiet", "--src-tls-verify=false", reference, f"oci:{work}/layout:image"
    )
    run("umoci", "unpack", "--rootless", "--image", f"{work}/layout:image", work / "bundle")
    image = work / "fs.img"
    with image.open("wb") as f:
        f.truncate(size)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-d", work / "bundle" / "rootfs", "-L", "root",
        image, f"{size // 1024}k")  # fmt: skip
    elapsed = time.monotonic() - started
    cpu = cpu_seconds() - cpu
    shutil.rmtree(work, ignore_errors=True)
    return elapsed, cpu


# --- BAAS, in a process of its own per checkout --------------------------------------


def setup_django(repo: Path, work: Path, registry: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="baas_site.settings",
        DATABASE_URL=f"sqlite:///{work / 'db.sqlite3'}",
        BAAS_VAR_DIR=str(work / "var"),
        BAAS_DISK_ROOT=str(work / "disk"),
        BAAS_IMPORT_ALLOWED_HOSTS="127.0.0.1",
        BAAS_IMPORT_INSECURE_REGISTRIES=registry,
        BAAS_IMPORT_WORK_DIR=str(work / "imports"),
        DEBUG="false",
        SECRET_KEY=os.urandom(24).hex(),
        LOG_LEVEL="WARNING",
    )
    (work / "disk").mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(repo))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _stamp(line: str) -> float:
    h, m, sec = line.split(" ", 1)[0].split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


STEP_NAMES = {"Resolving": "resolve", "Manifest": "resolve", "Pulling": "pull",
              "Checking": "check", "Unpacking": "unpack", "Every": "-", "Making": "mke2fs",
              "Set": "owners", "Storing": "store"}  # fmt: skip


def cpu_steps(log: str, marks: list[float]) -> list[tuple[str, float]]:
    """CPU seconds of each step (this process and the tools it ran), as :func:`steps`."""
    lines = [line for line in log.splitlines() if line.strip()]
    out: dict[str, float] = {}
    for line, (before, after) in zip(lines, itertools.pairwise(marks), strict=False):
        name = STEP_NAMES.get(line.split(" ", 2)[1], "other")
        out[name] = out.get(name, 0.0) + after - before
    out.pop("-", None)
    return list(out.items())


def steps(log: str, elapsed: float) -> list[tuple[str, float]]:
    """Seconds of each step, from the job's log (a step lasts until the next line); the
    last, "cleanup", from "Done" to the end of ``import_run``."""
    lines = [line for line in log.splitlines() if line.strip()]
    names = STEP_NAMES
    out: dict[str, float] = {}
    for line, after in itertools.pairwise(lines):
        name = names.get(line.split(" ", 2)[1], "other")
        out[name] = out.get(name, 0.0) + _stamp(after) - _stamp(line)
    out.pop("-", None)
    out["cleanup"] = elapsed - (_stamp(lines[-1]) - _stamp(lines[0]))
    return list(out.items())


def by_baas(reference: str, size: int, number: int) -> dict:
    """The worker's part of an import, into a fresh system image, timed to the stored version."""
    from accounts.models import Role, User
    from catalogue.models import Image, ImageType
    from imports.models import ImportJob, Kind
    from imports.services import jobs
    from imports.services.progress import Progress

    owner = User.objects.filter(username="bench").first() or User.objects.create_user(
        "bench", role=Role.ADMINISTRATOR
    )
    image = Image.objects.create(name=f"bench-{number}", owner=owner, type=ImageType.SYSTEM)
    job = ImportJob.objects.create(
        image=image, created_by=owner, kind=Kind.OCI, source=reference,
        platform="linux/amd64", layout="filesystem", label="root", size=size,
    )  # fmt: skip
    marks: list[float] = []  # CPU seconds at each line of the job's log
    log = Progress.log

    def log_with_cpu(self: Progress, line: str) -> None:
        marks.append(cpu_seconds())
        log(self, line)

    Progress.log = log_with_cpu  # type: ignore[method-assign]
    cpu = cpu_seconds()
    started = time.monotonic()
    try:
        done = jobs.import_run(job_id=job.pk)
    finally:
        Progress.log = log  # type: ignore[method-assign]
    elapsed = time.monotonic() - started
    marks.append(cpu_seconds())
    cpu = marks[-1] - cpu
    if done is None or done.state != "done":
        raise SystemExit(f"the import failed: {done and done.reason}\n{done and done.log}")
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "steps": steps(done.log, elapsed),
        "cpu_steps": cpu_steps(done.log, marks),
        "log": done.log,
    }


def worker(args: argparse.Namespace) -> int:
    """``--worker``: set up BAAS from ``--repo``, then import once per line read."""
    setup_django(args.repo, args.workdir, args.registry)
    for line in sys.stdin:
        result = by_baas(args.reference, args.fs_size, int(line))
        print(json.dumps(result), flush=True)
    return 0


class Contender:
    """A BAAS checkout's worker process."""

    def __init__(self, repo: Path, work: Path, registry: str, reference: str, fs_size: int):
        python = repo / ".venv" / "bin" / "python"
        self.name = "BAAS" if repo == REPO else f"BAAS {repo.name}"
        self.process = subprocess.Popen(
            [str(python), __file__, "--worker", "--repo", str(repo), "--workdir", str(work),
             "--registry", registry, "--reference", reference, "--fs-size", str(fs_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=repo,
        )  # fmt: skip

    def run(self, number: int) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{number}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the worker ended")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def report(name: str, hand: float, result: dict) -> tuple[float, float]:
    baas = result["elapsed"]
    store = dict(result["steps"]).get("store", 0.0)
    parts = "  ".join(f"{k} {v:.2f}" for k, v in result["steps"])
    parts += "; CPU: " + "  ".join(f"{k} {v:.2f}" for k, v in result["cpu_steps"])
    print(f"  {name:>12}: {baas:6.2f} s  (CPU {result['cpu']:5.2f} s)  ratio {baas / hand:.2f}x  "
          f"up to the store {(baas - store) / hand:.2f}x   [{parts}]")  # fmt: skip
    if os.environ.get("BENCH_VERBOSE"):
        print(result["log"])
    return baas / hand, (baas - store) / hand


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="bytes of files in the image")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--against", type=Path, help="another checkout of BAAS, timed too")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    parser.add_argument("--fs-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="baas-bench-import-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    registry_process = None
    contenders: list[Contender] = []
    try:
        size = parse_size(args.size)
        layers = test_layers(size, args.seed)
        write_layout(work / "oci", layers)
        registry_process, registry = start_registry(work)
        reference = f"docker://{registry}/bench/image:bench"
        run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{work / 'oci'}:bench",
            reference)  # fmt: skip
        fs_size = (size * 13 // 10 // MiB + 64) * MiB  # the same filesystem size for both
        repos = [REPO] + ([args.against.resolve()] if args.against else [])
        for i, repo in enumerate(repos):
            contenders.append(Contender(repo, work / f"baas{i}", registry, reference, fs_size))
        print(f"test image: {size / MiB:.0f} MiB of files in 2 layers, filesystem "
              f"{fs_size / MiB:.0f} MiB; {args.repeat} runs, alternating")  # fmt: skip
        ratios: dict[str, list[float]] = {c.name: [] for c in contenders}
        before_store: dict[str, list[float]] = {c.name: [] for c in contenders}
        for number in range(1, args.repeat + 1):
            load = os.getloadavg()
            hand, hand_cpu = by_hand(reference, work / "hand", fs_size)
            print(f"run {number} (load {load[0]:.2f} {load[1]:.2f}): by hand {hand:6.2f} s  "
                  f"(CPU {hand_cpu:5.2f} s)")  # fmt: skip
            order = contenders if number % 2 else contenders[::-1]
            for contender in order:
                ratio, early = report(contender.name, hand, contender.run(number))
                ratios[contender.name].append(ratio)
                before_store[contender.name].append(early)
        image = work / "sha.img"
        with image.open("wb") as f:
            f.write(os.urandom(64 * MiB))
        sha = time.monotonic()
        subprocess.run(["sha256sum", str(image)], check=True, capture_output=True)
        rate = 64 / (time.monotonic() - sha)
        for name, values in ratios.items():
            worst = max(values)
            verdict = "ok" if worst <= TARGET else "FAIL  <<<"
            print(f"{name}: ratios {' '.join(f'{r:.2f}' for r in values)}; median "
                  f"{statistics.median(values):.2f}x, worst {worst:.2f}x (target ≤ {TARGET}x "
                  f"every run)  {verdict}; up to the store, median "
                  f"{statistics.median(before_store[name]):.2f}x")  # fmt: skip
        print(f"(SHA-256 runs at {rate:.0f} MiB/s here)")
    finally:
        for contender in contenders:
            contender.close()
        if registry_process is not None:
            registry_process.terminate()
            registry_process.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
