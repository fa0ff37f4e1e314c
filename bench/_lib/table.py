"""``catalogue.py``'s results: a row per measurement (BAAS, baseline, ratio, target)
and the table they are printed as."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    name: str
    baas: float | None  # seconds (or MiB for sizes)
    baseline: float | None
    ratio: float | None
    target: str
    ok: bool | None
    detail: str = ""
    samples: dict = field(default_factory=dict)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    header = f"{'measurement':34} {'BAAS':>9} {'baseline':>9} {'ratio':>6} {'target':>19}  result"
    print("\n" + header)
    print("-" * len(header))
    for row in rows:
        verdict = {True: "PASS", False: "FAIL  <<<", None: "info"}[row.ok]
        print(
            f"{row.name:34} {_fmt(row.baas):>9} {_fmt(row.baseline):>9} "
            f"{_fmt(row.ratio):>6} {row.target:>19}  {verdict}"
        )
        if row.detail:
            print(f"{'':36}{row.detail}")
    print("(seconds, medians; MiB where marked; ratio = BAAS / baseline, for downloads the")
    print(" throughput ratio BAAS / nginx)")
