"""Files on the build host: written into the image's tree, removed, and digested.

:func:`write` makes the parent directories and sets the mode it is given (the
umask of the build does not apply to it); :func:`remove` removes a file, a
symlink or a whole directory, and nothing if there is none.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
