"""``flash.py``'s results: a row per way of flashing (its runs, the agent's CPU, the
target's blocks), the targets its ratios must meet, and the report printed per image
(``syncback.py`` keeps its rows and targets the same way)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flash_images import NextVersion

from _lib.testimage import TestImage
from _lib.util import mb_s

# The two parts of a re-flash of an unchanged disk that no agent can do without, timed
# alone: their sum over the full flash is the floor under the re-flash ratio.
CHECK_ALONE = (
    "the check alone: data map, BLAKE3 (ranges hashed in parallel, as the agent checks a disk "
    "that may hold the image already)"
)
START_ALONE = "the start-up alone: a new interpreter importing what the agent's re-flash runs"


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
    the raw-bmaptool and re-flash ratios (each from in-process phases of one run)."""
    disk = next((v for k, v in phases_s.items() if k.startswith("the disk alone")), None)
    check, start = phases_s.get(CHECK_ALONE), phases_s.get(START_ALONE)
    if disk is not None:
        print(
            f"The disk alone / bmaptool copy (raw, local): "
            f"{disk / rows['bmap_raw'].median:.2f} (a floor: above 1.0, no flash"
            " that reads its writes back from the medium meets the raw bmaptool target on this"
            " disk; bmaptool writes, syncs and reads nothing back)"
        )
    if check is not None and start is not None:
        full = rows["baas"].median
        print(
            f"(The check alone + the start-up alone) / full flash: ({check:.3f} + {start:.3f} s)"
            f" / {full:.2f} s = {(check + start) / full:.2f} (a floor of the re-flash ratio:"
            " BLAKE3 of the data an unchanged disk keeps, on every core, and a new interpreter"
            " importing the agent; before any check-in, instructions or result)"
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
