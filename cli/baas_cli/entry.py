"""The ``baas`` command: a plain push runs at once (:mod:`baas_cli.quick`), everything else
through typer (:func:`baas_cli.app.main`).

A push run as the program ends as soon as its answer is out: once standard output and
error are flushed, the process exits without the interpreter's teardown (freeing every
module and object one by one, 10-15 ms, part of every push's time). Nothing is left for
it to do: the file pushed, the connection and the upload's state file are closed by then,
and a thread still sampling compression (``--compress auto``) has nothing to finish. A
caller that runs :func:`main` in-process (``argv`` given) gets the exit code back.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    from baas_cli import quick

    code = quick.main(arguments)
    if code is not None:
        if argv is None:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except OSError:  # as the interpreter's own exit when its output cannot be written
                code = code or 120
            os._exit(code)
        return code
    from baas_cli.app import main as full

    return full(arguments)
