"""What commands print: JSON for scripts (``--json``), tables for people."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    console: Console  # standard output
    errors: Console  # standard error

_consoles: dict[str, Any] = {}


# Lines read by a program (a pipe, a file) are not wrapped at 80 columns: each row of a
# table stays one line, for grep and awk. A terminal, or COLUMNS, sets the width.
UNWRAPPED = 4096


def _console(name: str) -> Any:
    """``console`` or ``errors``, made (and rich imported) when first printed to: a push
    with ``--json`` prints its answer without them."""
    if name not in _consoles:
        from rich.console import Console

        stream = sys.stderr if name == "errors" else sys.stdout
        piped = not stream.isatty() and not os.environ.get("COLUMNS", "").isdigit()
        _consoles[name] = Console(stderr=name == "errors", width=UNWRAPPED if piped else None)
    return _consoles[name]


def __getattr__(name: str) -> Any:
    if name not in ("console", "errors"):
        raise AttributeError(name)
    return _console(name)


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
    from rich.table import Table

    grid = Table(title=title or None, show_edge=False, header_style="bold")
    for name, _ in columns:
        grid.add_column(name)
    for row in rows:
        grid.add_row(*("-" if (v := get(row)) is None else str(v) for _, get in columns))
    _console("console").print(grid)


def fields(data: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """One object as ``key  value`` lines (nested lists and objects as compact JSON)."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key in keys or list(data):
        value = data.get(key)
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        grid.add_row(key, "-" if value is None else str(value))
    _console("console").print(grid)


def show(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        emit_json(data)
    else:
        render()


def done(message: str, data: Any, as_json: bool) -> None:
    if as_json:
        emit_json(data)
    else:
        _console("console").print(message)
