"""Where the client keeps its profiles: ``$XDG_CONFIG_HOME/baas/config.toml``, mode 0600.

One profile per BAAS (``--profile``, ``BAAS_PROFILE``; ``default`` otherwise),
each with its URL, the token ``baas login`` made and who it belongs to.
``BAAS_URL`` and ``BAAS_TOKEN`` override the profile (scripts, CI).

    [profiles.default]
    url = "https://baas.example"
    token = "baas_…"
    token_id = 7
    username = "ada"
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baas_cli.errors import LocalError

DEFAULT_PROFILE = "default"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "baas"


def state_dir() -> Path:
    """Where unfinished uploads are remembered (``$XDG_STATE_HOME/baas``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "baas"


def config_path() -> Path:
    return config_dir() / "config.toml"


@dataclass
class Profile:
    name: str
    url: str = ""
    token: str = ""
    token_id: int | None = None
    username: str = ""


def read_all() -> dict[str, dict[str, Any]]:
    path = config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LocalError(f"Cannot read {path}: {exc}") from exc
    import tomllib  # only with a file: a script's BAAS_URL and BAAS_TOKEN need no parser

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LocalError(f"Cannot read {path}: {exc}") from exc
    profiles = data.get("profiles", {})
    return profiles if isinstance(profiles, dict) else {}


def profile_name(name: str | None) -> str:
    return name or os.environ.get("BAAS_PROFILE") or DEFAULT_PROFILE


def load(name: str | None) -> Profile:
    """The profile, with ``BAAS_URL``/``BAAS_TOKEN`` taking precedence over the file."""
    chosen = profile_name(name)
    stored = read_all().get(chosen, {})
    profile = Profile(
        name=chosen,
        url=str(stored.get("url", "")),
        token=str(stored.get("token", "")),
        token_id=stored.get("token_id"),
        username=str(stored.get("username", "")),
    )
    if os.environ.get("BAAS_URL"):
        profile.url = os.environ["BAAS_URL"]
    if os.environ.get("BAAS_TOKEN"):
        if os.environ["BAAS_TOKEN"] != profile.token:
            profile.token_id, profile.username = None, ""
        profile.token = os.environ["BAAS_TOKEN"]
    profile.url = profile.url.rstrip("/")
    return profile


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string of this kind is a TOML basic string


def save(profile: Profile) -> Path:
    profiles = read_all()
    entry: dict[str, Any] = {
        "url": profile.url,
        "token": profile.token,
        "username": profile.username,
    }
    if profile.token_id is not None:
        entry["token_id"] = profile.token_id
    profiles[profile.name] = entry
    return _write(profiles)


def forget(name: str) -> Path:
    profiles = read_all()
    profiles.pop(name, None)
    return _write(profiles)


def _write(profiles: dict[str, dict[str, Any]]) -> Path:
    """Rewrite the file whole, 0600 from its first byte, then rename it into place."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# Written by `baas login`: one table per profile. Keep it private (mode 0600).", ""]
    for name, entry in sorted(profiles.items()):
        lines.append(f"[profiles.{json.dumps(name)}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items() if value != ""]
        lines.append("")
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write("\n".join(lines))
    os.replace(temporary, path)
    return path
