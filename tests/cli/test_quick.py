"""A plain ``baas image push`` runs before typer is imported (its start-up is part of every
push): the quick parser agrees with typer's definition, and leaves typer everything else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer
from baas_cli import app as cli_app
from baas_cli import quick

UUID = "11111111-1111-1111-1111-111111111111"


def _typer_push_options() -> set[str]:
    cli_app._register()
    root = typer.main.get_command(cli_app.app)
    push = root.commands["image"].commands["push"]  # type: ignore[attr-defined]
    names: set[str] = set()
    for param in push.params:
        names.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
    return names


def test_the_quick_parser_knows_exactly_the_options_typer_defines():
    expected = set()
    for name, (value, _default) in quick.OPTIONS.items():
        expected.add(name)
        if not value and name != "--json":
            expected.add("--no-" + name[2:])
    assert _typer_push_options() == expected


def test_a_plain_push_is_parsed_with_typers_defaults_and_flags():
    found = quick.parse(["image", "push", UUID, "disk.img", "--no-resume", "--limit-rate", "5M"])
    assert found == {
        "image": UUID, "file": Path("disk.img"), "note": "", "digest": False,
        "compress": "auto", "limit_rate": "5M", "restart": False, "resume": False,
        "as_json": False,
    }  # fmt: skip
    assert quick.parse(["image", "push", "x", "f", "--json", "--resume"])["resume"] is True


def test_anything_else_is_left_to_typer():
    for argv in (
        ["image", "push", "--help"],
        ["image", "push", "x"],  # a missing argument: typer's message
        ["image", "push", "x", "f", "--colour"],  # an unknown option
        ["image", "push", "x", "f", "--comp", "none"],  # an abbreviation
        ["image", "pull", "x", "f"],
        ["-p", "lab", "image", "push", "x", "f"],  # a global option
    ):
        assert quick.parse(argv) is None, argv


def test_a_push_does_not_import_typer_pydantic_or_rich(tmp_path):
    code = (
        "import sys\n"
        "from baas_cli.entry import main\n"
        f"code = main(['image', 'push', {UUID!r}, {str(tmp_path / 'missing.img')!r}, '--json'])\n"
        "print(code, sorted(m for m in ('typer', 'pydantic', 'rich.progress', 'httpx')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"BAAS_URL": "http://127.0.0.1:9", "BAAS_TOKEN": "x", "PATH": "/usr/bin:/bin",
             "XDG_CONFIG_HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert out.stdout.split("\n")[0] == "2 []", out
    assert "Cannot read" in out.stderr


def test_a_push_run_as_the_program_exits_with_its_code_and_its_whole_output(tmp_path):
    """The program ends without the interpreter's teardown (baas_cli.entry): its message and
    exit code must still come out whole, to a pipe as to a terminal's file."""
    baas = Path(sys.executable).parent / "baas"
    env = {"BAAS_URL": "http://127.0.0.1:9", "BAAS_TOKEN": "x", "XDG_CONFIG_HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path)}  # fmt: skip
    missing = tmp_path / "missing.img"
    out = subprocess.run([str(baas), "image", "push", UUID, str(missing), "--json"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert out.returncode == 2, out
    assert out.stderr == f"baas: Cannot read {missing}: No such file or directory\n", out
    (tmp_path / "disk.img").write_bytes(b"x" * 4096)
    out = subprocess.run([str(baas), "image", "push", UUID, str(tmp_path / "disk.img")],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert out.returncode == 2, out  # nothing listens on port 9
    assert out.stderr.endswith("baas: The connection to 127.0.0.1:9 broke: [Errno 111] "
                               "Connection refused\n"), out  # fmt: skip


def test_usage_errors_exit_2_with_typers_message(tmp_path):
    baas = Path(sys.executable).parent / "baas"
    env = {"BAAS_URL": "http://127.0.0.1:9", "BAAS_TOKEN": "x", "XDG_CONFIG_HOME": str(tmp_path)}
    for args, said in ((["image", "push", "x"], "Missing argument"),
                       (["image", "nope"], "No such command")):  # fmt: skip
        out = subprocess.run([str(baas), *args], capture_output=True, text=True, env=env)
        assert out.returncode == 2, out
        assert said in out.stderr and "Traceback" not in out.stderr


def test_a_quiet_transfer_says_what_it_does_without_rich():
    """Under ``--json`` a resumed push still says "Resuming…" on standard error, as plain
    text: importing rich for that one line cost ~20 ms of every resumed push."""
    code = (
        "import sys\n"
        "from baas_cli.progress import Transfer\n"
        "with Transfer('push disk.img', quiet=True) as transfer:\n"
        "    transfer.push_report().say('Resuming: the server holds 42 bytes of this upload.')\n"
        "print('rich' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"
    assert out.stderr == "Resuming: the server holds 42 bytes of this upload.\n"
