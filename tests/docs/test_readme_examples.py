"""The README's examples, run as written against a live server.

The ```sh blocks of the README's "From a script" section, then those of
docs/api.md's "A session from a script", docs/uploads.md's "Examples" and
docs/lab.md's "One computer, one virtual machine", are run in order, in one
bash (so the variables one block sets are there for the next), the way a
person would type them after ``./dev up``:

* the one administrator ``./dev up`` makes (``admin`` with a printed password)
  is made the same way, and its password is typed at each block's ``read``;
* the line ``BAAS=http://127.0.0.1:8000`` points at the live server instead;
* a ``# $ command`` comment, a stand-in the README gives for a person's step
  (installing an OS in a VM), is run;
* ``curl`` fails on an HTTP error (``--fail-with-body``) and every answer is
  echoed, so a failing example shows what the server said.

A real Celery worker processes the versions (compression, digests) and the deployment.
New images are small here (``BAAS_NEW_IMAGE_SIZE``), so downloading one does
not write gigabytes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command

from catalogue.models import Image
from flashing.models import LIVE_MOUNT_STATES, NetworkMount

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
# (file, heading): every ```sh block under that heading, up to the next heading
# of the same or a higher level.
SOURCES = [
    ("README.md", "From a script"),
    ("docs/api.md", "A session from a script"),
    ("docs/uploads.md", "Examples"),
    ("docs/lab.md", "One computer, one virtual machine"),
]
# How many ```sh blocks each source held when the README held them all: none may be lost.
FEWEST_EXAMPLES = 7
DEFAULT_BAAS = "BAAS=http://127.0.0.1:8000"
ADMIN_PASSWORD = "printed-by-dev-up"
PASSWORD_PROMPT = re.compile(r"^read -rsp 'Password of admin: '", re.MULTILINE)
# What a person would have to replace: <uuid>, "…", baas_… (comments may show them).
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>|…")
COMMENT = re.compile(r"(^|\s)#.*$")
STAND_IN = re.compile(r"^# \$ (?P<command>.+)$", re.MULTILINE)
# curl fails on an HTTP error, and shows each answer once, even one that $(…) captures.
PREAMBLE = """\
set -euo pipefail
shopt -s inherit_errexit
exec 3>&1
curl() {
  local status=0
  if [ /dev/stdout -ef /dev/fd/3 ]; then command curl --fail-with-body -sS "$@" || status=$?
  else command curl --fail-with-body -sS "$@" | tee /dev/fd/3 || status=$?; fi
  echo >&3
  return $status
}
"""
MARKER = "@@ example {} @@"
TIMEOUT = 300


@dataclass(frozen=True)
class Example:
    source: str
    text: str

    def script(self, base_url: str) -> str:
        """The block as bash runs it: the live server's URL, stand-ins uncommented."""
        text = self.text.replace(DEFAULT_BAAS, f"BAAS={base_url}")
        return STAND_IN.sub(lambda match: match["command"], text)


def _headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(index, level, title) of the Markdown headings, outside fenced blocks."""
    found, fenced = [], False
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#+) (.*)$", line)):
            found.append((index, len(match[1]), match[2].strip()))
    return found


def _section(lines: list[str], heading: str) -> tuple[int, int]:
    """The range of lines under the heading titled ``heading``, up to the next one as high."""
    headings = _headings(lines)
    for position, (start, level, title) in enumerate(headings):
        if title == heading:
            later = [index for index, other, _ in headings[position + 1 :] if other <= level]
            return start + 1, later[0] if later else len(lines)
    raise AssertionError(f"No section {heading!r}")


def examples() -> list[Example]:
    """The ```sh blocks of every source, in order."""
    found = []
    for name, heading in SOURCES:
        lines = (ROOT / name).read_text().splitlines()
        start, end = _section(lines, heading)
        block: list[str] | None = None
        for index in range(start, end):
            line = lines[index]
            if block is None and line.strip() == "```sh":
                block, opened = [], index + 1
            elif block is not None and line.strip() == "```":
                found.append(Example(f"{name}:{opened}", "\n".join(block) + "\n"))
                block = None
            elif block is not None:
                block.append(line)
    return found


def _failure(result: subprocess.CompletedProcess, runnable: list[Example]) -> str:
    """Which example failed, its text, and what it printed."""
    output = result.stdout
    ran = [i for i, _ in enumerate(runnable) if MARKER.format(i) in output]
    failed = runnable[ran[-1]] if ran else runnable[0]
    printed = output.rsplit(MARKER.format(ran[-1]), 1)[-1] if ran else output
    return (
        f"The example at {failed.source} fails (exit status {result.returncode}):\n"
        f"{failed.text}\n--- what it printed ---\n{printed}"
    )


@pytest.fixture
def dev_up_admin(monkeypatch):
    """The administrator ``./dev up`` makes when there is no terminal."""
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", ADMIN_PASSWORD)
    call_command(
        "createsuperuser", "--noinput", username="admin", email="admin@localhost", verbosity=0
    )


def test_the_examples_are_found_and_start_where_dev_up_leaves_off():
    found = examples()
    assert found, "No ```sh block under the README's 'From a script'"
    assert found[0].source.startswith("README.md:"), "The README's own examples come first"
    assert DEFAULT_BAAS in found[0].text, "The first example must set BAAS as ./dev up serves it"


def test_every_source_has_examples_and_none_were_lost():
    found = examples()
    for name, _heading in SOURCES:
        assert any(e.source.startswith(f"{name}:") for e in found), f"No example in {name}"
    assert len(found) >= FEWEST_EXAMPLES, f"Only {len(found)} examples are tested"


def test_the_examples_have_no_placeholders_to_fill_in():
    for example in examples():
        for line in example.text.splitlines():
            command = COMMENT.sub("", line)
            assert not PLACEHOLDER.search(command), f"{example.source}: a placeholder in {line!r}"


@pytest.mark.worker
def test_the_readme_examples_run_as_written(
    live_server, celery_worker, dev_up_admin, settings, tmp_path
):
    settings.BAAS_NEW_IMAGE_SIZE = 16 * MiB
    runnable = examples()
    assert runnable, "No examples found"
    script = PREAMBLE + "".join(
        f"printf '\\n%s\\n' '{MARKER.format(i)}'\n{example.script(live_server.url)}"
        for i, example in enumerate(runnable)
    )
    # `baas` (cli/) as `./dev up` installs it, beside this Python; its login in tmp_path.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    result = subprocess.run(
        ["bash", "-c", script],
        env=env,
        input=(ADMIN_PASSWORD + "\n") * len(PASSWORD_PROMPT.findall(script)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, _failure(result, runnable)
    _assert_the_upload_is_the_downloaded_disk_changed()
    _wait_for_the_mounts_to_end()


def _assert_the_upload_is_the_downloaded_disk_changed() -> None:
    """Version 1 is the whole raw disk version 0 was, with the stand-in's change."""
    image = Image.objects.get(owner__username="ada", name="debian")
    empty, installed = image.versions.order_by("number")[:2]
    assert installed.number == 1
    assert (installed.size, installed.sha256 != empty.sha256) == (empty.size, True), (
        "The download is not the raw disk: the upload made of it differs in size, or is the same"
    )


def _wait_for_the_mounts_to_end(timeout: float = 60.0) -> None:
    """The release ends any network mount the deployment started: no export is left running."""
    deadline = time.monotonic() + timeout
    while NetworkMount.objects.filter(state__in=LIVE_MOUNT_STATES).exists():
        assert time.monotonic() < deadline, "The network mount still runs after the release"
        time.sleep(0.2)
