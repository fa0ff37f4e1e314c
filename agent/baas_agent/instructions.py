"""The server's write and sync instructions, checked as they are parsed; the error of a step.

Contracts:

- :meth:`WriteInstruction.from_json` and :meth:`SyncInstruction.from_json` take
  the server's JSON (docs/agent-protocol.md) and raise :class:`InstructionError`
  for a missing or mistyped field, an unknown compression or a malformed SHA-256.
  A write instruction's unusable ``delta`` is dropped with a warning, not
  raised: the disk is then flashed in full.
- :class:`FlashError` is what a failed step raises (the write, the sync, the
  layout); its message is the reason reported to the server.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from baas_agent.compress import COMPRESSIONS

if TYPE_CHECKING:
    from baas_agent.delta import DeltaInstruction

log = logging.getLogger(__name__)
_T = TypeVar("_T")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class FlashError(Exception):
    """A step failed; the message is the reason reported to the server."""


class InstructionError(FlashError):
    """The server's instructions are malformed."""


def _field(data: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InstructionError(f"instruction field {name!r} is missing or not {kind.__name__}")
    return value


def _sha256(data: dict[str, Any]) -> str:
    value = _field(data, "sha256", str).lower()
    if not SHA256_HEX.fullmatch(value):
        raise InstructionError(f"instruction field 'sha256' is not a SHA-256: {value!r}")
    return value


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InstructionError(f"instruction field {name!r} is not str")
    return value


@dataclass(frozen=True)
class WriteInstruction:
    image: str
    version: int
    disk: str
    url: str
    size: int
    sha256: str
    compression: str
    stored_size: int | None = None
    map_url: str | None = None
    data_url: str | None = None
    delta: DeltaInstruction | None = None
    inline_map: dict[str, Any] | None = None  # what map_url answers, sent along ("map")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WriteInstruction:
        compression = data.get("compression", "none")
        if compression not in COMPRESSIONS:
            raise InstructionError(f"unknown compression {compression!r}")
        stored = data.get("stored_size")
        delta = None
        if data.get("delta") is not None:
            from baas_agent.delta import DeltaError, DeltaInstruction

            try:
                delta = DeltaInstruction.from_json(data["delta"])
            except DeltaError as exc:  # the disk is then flashed in full: nothing is lost
                log.warning("image %s: its delta is unusable (%s)", data.get("image"), exc)
        return cls(
            image=_field(data, "image", str),
            version=_field(data, "version", int),
            disk=_field(data, "disk", str),
            url=_field(data, "url", str),
            size=_field(data, "size", int),
            sha256=_sha256(data),
            compression=compression,
            stored_size=stored if isinstance(stored, int) else None,
            map_url=_optional_str(data, "map_url"),
            data_url=_optional_str(data, "data_url"),
            delta=delta,
            inline_map=data["map"] if isinstance(data.get("map"), dict) else None,
        )

    def label(self) -> str:
        return f"image {self.image} v{self.version} on {self.disk}"


@dataclass(frozen=True)
class SyncInstruction:
    image: str
    disk: str
    version: int
    size: int
    sha256: str
    upload_url: str
    map_url: str | None = None
    hashes_url: str | None = None  # the server takes the changes against ``version``

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyncInstruction:
        return cls(
            image=_field(data, "image", str),
            disk=_field(data, "disk", str),
            version=_field(data, "version", int),
            size=_field(data, "size", int),
            sha256=_sha256(data),
            upload_url=_field(data, "upload_url", str),
            map_url=_optional_str(data, "map_url"),
            hashes_url=_optional_str(data, "hashes_url"),
        )

    def label(self) -> str:
        return f"image {self.image} (flashed v{self.version}) from {self.disk}"
