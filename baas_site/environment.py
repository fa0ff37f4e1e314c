"""Where the settings come from: the environment, read with django-environ (``env``; a
``.env`` file at the checkout's root fills in what the environment leaves unset), a
secret's file (``env_secret``), and the embedded default's directory (``VAR_DIR``).

``baas_site.settings`` and the modules it takes settings from
(``baas_site.settings_celery``) all read through this one ``env``.
"""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")


def env_secret(name: str, default: str | None = None) -> str | None:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE``."""
    path = env.str(f"{name}_FILE", default="")
    if path:
        return Path(path).read_text().strip()
    value: str | None = env.str(name, default=default)
    return value


# Where the embedded default keeps its state: database, broker queues, images.
VAR_DIR = Path(env.str("BAAS_VAR_DIR", default=str(BASE_DIR / "var")))
