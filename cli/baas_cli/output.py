"""What commands print: JSON for scripts (``--json``), tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def when(value: str | None) -> str:
    return (value or "-").replace("T", " ")[:19]


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], title: str = "") -> None:
    grid = Table(title=title or None, show_edge=False, header_style="bold")
    for name, _ in columns:
        grid.add_column(name)
    for row in rows:
        grid.add_row(*("-" if (v := get(row)) is None else str(v) for _, get in columns))
    console.print(grid)


def fields(data: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """One object as ``key  value`` lines (nested lists and objects as compact JSON)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key in keys or list(data):
        value = data.get(key)
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        grid.add_row(key, "-" if value is None else str(value))
    console.print(grid)


def show(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        emit_json(data)
    else:
        render()


def done(message: str, data: Any, as_json: bool) -> None:
    if as_json:
        emit_json(data)
    else:
        console.print(message)
