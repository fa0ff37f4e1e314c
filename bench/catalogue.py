"""Catalogue benchmark: create, upload and download a 6 GiB image through gunicorn.

Every figure is a ratio against a baseline measured in the same run on the
same disk (``cp --sparse=always`` + fsync for uploads, nginx with sendfile for
downloads), with the absolute seconds and MB/s beside it. The script builds
its own throwaway BAAS (SQLite unless DATABASE_URL is set, DEBUG off, the
project's gunicorn.conf.py on a free loopback port), its own test image and
its own nginx, and removes all of it at the end unless ``--keep``.

    .venv/bin/python bench/catalogue.py [--workdir DIR] [--size 6G] [--data 600M]
        [--repeat 3] [--seed 1] [--json out.json] [--keep]

It always exits 0 once it has measured; a missed target is printed as FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from _lib.baas import Baas
from _lib.cli import measure_cli
from _lib.downloads import measure_download
from _lib.table import Row, print_table
from _lib.testimage import test_image
from _lib.uploads import measure_create, measure_uploads
from _lib.util import REPO, MiB, load_average, log, parse_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where everything goes (default: a temp dir)")
    parser.add_argument("--size", default="6G", help="logical image size (default 6G)")
    parser.add_argument("--data", default="600M", help="data in the image (default 600M)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement (median)")
    parser.add_argument("--json", type=Path, help="save the results here")
    parser.add_argument("--keep", action="store_true", help="keep the workdir and test data")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the BAAS checkout to run (default: this one)"
    )
    parser.add_argument(
        "--part",
        choices=("all", "uploads", "versions"),
        default="all",
        help="uploads and downloads, ten versions on XFS (bench/versions.py), or both",
    )
    parser.add_argument(
        "--versions-models",
        default="files,scattered",
        help="how the versions change 1 %% of the data: files (gated), scattered (information)",
    )
    parser.add_argument(
        "--only", choices=["all", "cli", "push"], default="all",
        help="cli: only the command-line client's push and pull (and create); push: its pushes",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for tool in ("curl", "zstd", "nginx", "cp"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise SystemExit(f"{tool} is missing: apt-get install -y curl zstd nginx")
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
    size, data = parse_size(args.size), parse_size(args.data)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="baas-bench-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    for directory in (workdir, run_dir):  # nginx's workers (not root) must reach the files
        directory.chmod(0o755)
    log(f"workdir {workdir}; load average {load_average()}")
    baas = Baas(run_dir, size, args.repo.resolve())
    try:
        with _cleanup(baas, run_dir, workdir, args):
            rows, meta = _measure_all(baas, workdir, run_dir, size, data, args)
    except KeyboardInterrupt:
        return 130
    print_table(rows)
    if args.json:
        results = {"meta": meta, "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(results, indent=2, default=str))
        log(f"results saved to {args.json}")
    return 0


def _measure_all(baas: Baas, workdir: Path, run_dir: Path, size: int, data: int, args) -> tuple:
    image = test_image(workdir / "data", size, data, args.seed)
    rows = []
    if args.part in ("all", "versions"):
        import versions  # bench/versions.py, beside this script

        models = [m for m in args.versions_models.split(",") if m]
        rows += versions.measure_versions(image, run_dir, args.repo.resolve(), args.seed, models)
        if args.part == "versions":
            return rows, {"seed": args.seed, "load_average_end": load_average(),
                          "cpus": os.cpu_count()}  # fmt: skip
    log(f"BAAS on 127.0.0.1:{baas.port} ({baas.database}, DEBUG off, gunicorn.conf.py)")
    baas.setup()
    baas.start()
    rows.append(measure_create(baas, args.repeat, size))
    log(f"create: {rows[-1].baas:.3f} s")
    if args.only == "all":
        log(f"uploads ({args.repeat}x each, interleaved), load {load_average()}")
        upload_rows, keep_uuid = measure_uploads(baas, image, run_dir, args.repeat)
        rows += upload_rows
        log(f"downloads ({args.repeat}x each), load {load_average()}")
        try:
            rows.append(measure_download(baas, run_dir, keep_uuid, args.repeat))
        except SystemExit as exc:  # e.g. a checkout without downloads: report it, keep the rest
            rows.append(Row("download vs nginx (throughput)", None, None, None, ">= 0.9", False,
                            f"not measured: {exc}"))  # fmt: skip
    log(f"the command-line client ({args.repeat}x each, interleaved), load {load_average()}")
    rows += measure_cli(baas, image, run_dir, args.repeat, pull=args.only != "push")
    meta = {
        "size": size,
        "data_blocks": image.data,
        "written": image.written,
        "zst_size": image.zst_size,
        "extents": image.extents,
        "seed": args.seed,
        "repeat": args.repeat,
        "database": baas.database,
        "load_average_end": load_average(),
        "cpus": os.cpu_count(),
    }
    log(
        f"test image: {image.written / MiB:.0f} MiB written in {image.extents} extents, "
        f"{image.data / MiB:.0f} MiB of non-zero blocks, zstd {image.zst_size / MiB:.0f} MiB"
    )
    return rows, meta


@contextlib.contextmanager
def _cleanup(baas: Baas, run_dir: Path, workdir: Path, args) -> Iterator[None]:
    try:
        yield
    finally:
        baas.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                shutil.rmtree(workdir / "data", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
