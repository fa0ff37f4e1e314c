"""Flash benchmark: the agent writes a 6 GiB zstd image onto a file disk, against bmaptool and dd.

Everything is measured in the same run on the same disk, interleaved round by
round (median of ``--repeat``), with absolute seconds and MB/s beside every
ratio. The BAAS figure is a **full deployment**: a throwaway BAAS (gunicorn,
SQLite, DEBUG off; ``bench/_lib/baas.py``'s ``Baas``) holds the image as a
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
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _lib.baas import Baas
from _lib.deployments import Deployments, byte_compile
from _lib.flash_phases import phases, profile_agent
from _lib.flash_report import Row, report
from _lib.flash_rounds import before_round, fresh, one_round
from _lib.testimage import TestImage
from _lib.util import REPO, load_average, log, parse_size, read_through, run
from flash_images import IMAGES, NextVersion


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


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
