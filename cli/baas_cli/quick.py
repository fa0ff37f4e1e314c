"""``baas image push``, the command whose start-up is part of every transfer it makes.

:func:`push_file` is the command itself (``images.push`` is its typer face).
:func:`main` runs it before typer is even imported when the arguments are plainly a push
(``baas image push IMAGE FILE [options]``): typer builds a pydantic adapter for every
parameter at each run and imports pydantic and rich, ~0.2 s of a core before the first
byte goes out, about what ``cp`` takes for the whole bench disk. Anything else — help,
completion, an option it does not know, a global option — goes to typer, which stays the
one definition of the interface (``tests/cli/test_quick.py`` checks both agree).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from baas_cli.errors import LocalError

COMMAND = ["image", "push"]
# The options of ``baas image push`` (besides IMAGE FILE): name -> (takes a value, default).
OPTIONS: dict[str, tuple[bool, Any]] = {
    "--note": (True, ""),
    "--digest": (False, False),
    "--compress": (True, "auto"),
    "--limit-rate": (True, "0"),
    "--restart": (False, False),
    "--resume": (False, True),
    "--json": (False, False),
}


def parse_rate(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in units else ""
    try:
        return int(float(text[: len(text) - len(unit)]) * units[unit])
    except ValueError as exc:
        raise LocalError(f"Not a rate: {text!r} (e.g. 50M)") from exc


def push_file(
    *,
    image: str,
    file: Path,
    note: str = "",
    digest: bool = False,
    compress: str = "auto",
    limit_rate: str = "0",
    restart: bool = False,
    resume: bool = True,
    as_json: bool = False,
    profile: str | None = None,
) -> None:
    """Upload FILE as the image's next version: only its data, resumable."""
    from baas_cli import config, output
    from baas_cli.client import Api, is_uuid
    from baas_cli.progress import Transfer
    from baas_cli.push import Push, PushOptions

    if compress not in ("auto", "zstd", "none"):
        raise LocalError("--compress is auto, zstd or none.")
    api = Api(config.load(profile))
    # A UUID needs no question to the server: the upload's own requests are the first ones.
    found = {"uuid": image, "name": image} if is_uuid(image) else api.image(image)
    options = PushOptions(
        note=note,
        digest=digest,
        compress=compress,
        limit_rate=parse_rate(limit_rate),
        restart=restart,
        resumable=resume,
    )
    with Transfer(f"push {file.name}", quiet=as_json) as transfer:
        report = transfer.push_report()
        version = Push(api, found, file, options, report).run()
        sent = transfer.done
    summary = {
        "encoding": report.encoding,
        "sent": sent,
        "resumed_from": report.resumed_from,
        "body_length": report.body_length,
        "restarted": report.restarted or None,
        **report.extra,
    }
    output.done(
        f"{found['name']} version {version.get('version')} stored "
        f"({output.size(version.get('size'))}; {output.size(sent)} sent, {report.encoding}).",
        {**version, "transfer": summary},
        as_json,
    )


class _Unsure(Exception):
    """Not plainly a push: typer decides."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # never exits: typer says it better
        raise _Unsure(message)


def _parser() -> _Parser:
    parser = _Parser(prog="baas image push", add_help=False, allow_abbrev=False)
    parser.add_argument("image")
    parser.add_argument("file", type=Path)
    for name, (value, default) in OPTIONS.items():
        dest = name[2:].replace("-", "_")
        if value:
            parser.add_argument(name, dest=dest, default=default)
        else:
            flags = [name, "--no-" + name[2:]] if name != "--json" else [name]
            parser.add_argument(*flags, dest=dest, default=default, action=_Flag, nargs=0)
    return parser


class _Flag(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, not str(option).startswith("--no-"))


def parse(argv: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`push_file` if ``argv`` is plainly a push, else None."""
    if argv[:2] != COMMAND or any(a in ("-h", "--help") or a.startswith("--=") for a in argv):
        return None
    try:
        found = vars(_parser().parse_args(argv[2:]))
    except _Unsure:
        return None
    found["as_json"] = found.pop("json")
    return found


def main(argv: list[str]) -> int | None:
    """Run a plain ``baas image push`` without typer; None when typer must (see the top)."""
    arguments = parse(argv)
    if arguments is None:
        return None
    from baas_cli import output
    from baas_cli.errors import LOCAL, CliError

    try:
        push_file(**arguments)
    except CliError as exc:
        output.errors.print(f"baas: {exc}", markup=False, highlight=False)
        return exc.exit_code
    except OSError as exc:
        output.errors.print(f"baas: {exc}", markup=False, highlight=False)
        return LOCAL
    except KeyboardInterrupt:
        output.errors.print("baas: interrupted")
        return 130
    return 0
