"""The ``baas`` command: a plain push runs at once (:mod:`baas_cli.quick`), everything else
through typer (:func:`baas_cli.app.main`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    from baas_cli import quick

    code = quick.main(arguments)
    if code is not None:
        return code
    from baas_cli.app import main as full

    return full(arguments)
