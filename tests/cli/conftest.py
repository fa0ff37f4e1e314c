"""Fixtures of the CLI tests: ``baas`` run as a command against a live server.

Each test gets its own configuration and state directories (``XDG_CONFIG_HOME``,
``XDG_STATE_HOME``), a user with a password, and :class:`Baas`, which runs
``baas`` (the one ``./dev install`` put beside this Python) as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from accounts.models import Role
from tests.accounts.factories import PASSWORD, UserFactory

BAAS = Path(sys.executable).parent / "baas"
MiB = 1 << 20


@dataclass
class Baas:
    url: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def environ(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_STATE_HOME": str(self.home / "state"),
            "COLUMNS": "200",
            **self.env,
            **extra,
        }

    def __call__(
        self, *args: str, code: int = 0, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(BAAS), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.environ(),
            timeout=timeout,
            check=False,
        )
        assert result.returncode == code, (
            f"baas {' '.join(args)} exited {result.returncode}, not {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result

    def json(self, *args: str, code: int = 0, stdin: str | None = None):
        return json.loads(self(*args, "--json", code=code, stdin=stdin).stdout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(BAAS), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environ(),
            text=True,
        )

    def token(self, profile: str = "default") -> str:
        import tomllib

        text = (self.home / "config" / "baas" / "config.toml").read_text()
        return tomllib.loads(text)["profiles"][profile]["token"]

    def login(self, username: str, password: str = PASSWORD) -> dict:
        return self.json(
            "login", self.url, "--user", username, "--password-stdin", stdin=password + "\n"
        )


@pytest.fixture
def ada(transactional_db):
    return UserFactory(username="ada", role=Role.USER)


@pytest.fixture
def baas(live_server, tmp_path) -> Baas:
    """The client, not logged in yet, pointed at nothing: tests log in as they need."""
    return Baas(live_server.url, tmp_path / "home")


@pytest.fixture
def baas_ada(baas, ada) -> Baas:
    """The client logged in as ``ada`` (a token with read, write and admin)."""
    baas.login("ada")
    return baas


def sparse_disk(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    """A sparse file of ``size`` bytes holding ``pieces`` (offset, bytes), holes elsewhere."""
    with path.open("wb") as file:
        file.truncate(size)
        for offset, data in pieces:
            file.seek(offset)
            file.write(data)
    return path


def random_bytes(n: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)  # noqa: S311 -- test data, not secrets
