"""Registry credentials in flight: sealed for the job's message, opened once by the worker.

Credentials a request brings are never stored in the database or logged: they
travel to the worker inside the task's message, sealed with a key derived from
``SECRET_KEY`` (an HMAC-SHA-256 keystream and tag; the standard library only),
and the task's logged arguments are replaced by a placeholder. The worker
writes them into a containers-auth file of mode 0600 inside the job's folder for
skopeo's ``--authfile`` (never on a command line), removed when the job ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from django.conf import settings


class SealBroken(Exception):
    """The sealed credentials were altered or sealed with another key."""


def _key(purpose: str) -> bytes:
    return hmac.new(
        str(settings.SECRET_KEY).encode(), f"baas.imports.{purpose}".encode(), hashlib.sha256
    ).digest()


def _stream(nonce: bytes, length: int) -> bytes:
    key, out, counter = _key("encrypt"), b"", 0
    while len(out) < length:
        out += hmac.new(key, nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest()
        counter += 1
    return out[:length]


def seal(credentials: dict[str, str]) -> str:
    plain = json.dumps(credentials).encode()
    nonce = os.urandom(16)
    cipher = bytes(a ^ b for a, b in zip(plain, _stream(nonce, len(plain)), strict=True))
    tag = hmac.new(_key("tag"), nonce + cipher, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(nonce + tag + cipher).decode()


def unseal(sealed: str) -> dict[str, str]:
    data = base64.urlsafe_b64decode(sealed.encode())
    nonce, tag, cipher = data[:16], data[16:48], data[48:]
    expected = hmac.new(_key("tag"), nonce + cipher, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, expected):
        raise SealBroken("The credentials of this import could not be opened.")
    plain = bytes(a ^ b for a, b in zip(cipher, _stream(nonce, len(cipher)), strict=True))
    return dict(json.loads(plain))


def auth_file_for(registry: str, credentials: dict[str, str]) -> str:
    """A containers-auth.json document for ``registry`` (host[:port])."""
    token = base64.b64encode(
        f"{credentials['username']}:{credentials['password']}".encode()
    ).decode()
    return json.dumps({"auths": {registry: {"auth": token}}})
