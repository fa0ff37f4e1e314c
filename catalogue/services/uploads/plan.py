"""The plan of one upload: what is done with its bytes, chosen once, before the first is kept.

Everything that differs from one upload to another is decided here, from the
request (a digest sent or asked for, the body's length, a declared encoding)
the image (its file standard and compression) and the first bytes of the
body (the encoding they start like, the size a zstd frame or a sparse header
announces). The stages (:mod:`catalogue.services.uploads.stages`) then only
follow the plan: none of them asks again what kind of upload this is.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import asdict, dataclass
from typing import Any

import zstandard

from catalogue.exceptions import UploadTooLarge
from catalogue.models import Compression, FileStandard, Image
from diskimage import sparse as sparseimage
from diskimage.decoders import QCOW2_HEADER, SPARSE, sniff_encoding

HEAD_BYTES = QCOW2_HEADER.size  # enough to recognise compression and read a qcow2 header


class Storing(enum.Enum):
    """What the pending file holds, and so which stages run."""

    # Decoded, mapped and written raw, sparse (a compression job rewrites it later).
    RAW = "raw"
    # Decoded and mapped, but the bytes as sent are kept: a gzip image sent gzip.
    AS_SENT = "as sent"
    # Kept as sent without decoding: only the zstd frame headers are read, for the size,
    # and the first bytes decoded, for the file standard. A large zstd upload of a raw image,
    # whose SHA-256 is left to a job anyway: that job decodes, checks and maps it.
    AS_SENT_UNDECODED = "as sent, undecoded"


@dataclass(frozen=True)
class UploadOptions:
    """What the caller knows before the body: limits and what the client asked for.

    ``digest``: hash the whole raw image now, however large (a digest was sent
    or asked for). ``wire_digest``: hash the bytes as sent, for a digest that
    may still come and may be of the compressed bytes. ``raw_at_least``: a
    lower bound of the raw size (from the request's length).
    """

    max_size: int
    sha256_limit: int | None  # None: the whole image now; else up to this many raw bytes
    wire_digest: bool = True
    raw_at_least: int = 0


@dataclass(frozen=True)
class UploadPlan:
    """What happens to the bytes of one upload.

    ``encoding``: none, gzip, zstd or sparse. ``sha256_now``: the whole-image
    SHA-256 starts beside the stream (and stops, left to the digest job, if
    the image passes ``sha256_limit``; None: never stops). ``wire_sha256``: the
    bytes as sent are hashed too (compressed uploads only).
    """

    encoding: str
    storing: Storing
    sha256_now: bool
    sha256_limit: int | None
    wire_sha256: bool
    max_size: int

    @property
    def decodes(self) -> bool:
        return self.storing is not Storing.AS_SENT_UNDECODED

    @property
    def keeps_as_sent(self) -> bool:
        """The pending file gets the bytes as sent (else the decoded ones, sparse)."""
        return self.storing is not Storing.RAW

    @property
    def stored_compression(self) -> str:
        return self.encoding if self.keeps_as_sent else Compression.NONE

    def state(self) -> dict[str, Any]:
        """The plan as plain values: an upload decoded over several requests keeps the plan
        its first bytes chose (:meth:`from_state`)."""
        return {**asdict(self), "storing": self.storing.value}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UploadPlan:
        return cls(**{**state, "storing": Storing(state["storing"])})


def plan_upload(
    *, image: Image, options: UploadOptions, declared: str | None, head: bytes
) -> UploadPlan:
    """The plan for an upload to ``image`` whose body starts with ``head``.

    ``declared``: the encoding the client declared (None: recognised from
    ``head``). Raises UploadTooLarge when a sparse header announces more than
    the limit.
    """
    encoding = declared if declared is not None else sniff_encoding(head)
    announced = sparseimage.declared_size(head) if encoding == SPARSE else None
    if announced is not None and announced > options.max_size:
        raise UploadTooLarge(
            f"The sparse image's header announces {announced} bytes, more than the "
            f"{options.max_size}-byte limit; nothing was stored."
        )
    sha256_now = not _too_large_to_hash(encoding, head, options)
    if not sha256_now and _zstd_frames_tell_size(encoding, head, image):
        storing = Storing.AS_SENT_UNDECODED
    elif encoding == Compression.GZIP == image.compression:
        storing = Storing.AS_SENT  # zstd is stored raw first, for the job to frame it
    else:
        storing = Storing.RAW
    return UploadPlan(
        encoding=encoding,
        storing=storing,
        sha256_now=sha256_now,
        sha256_limit=options.sha256_limit,
        wire_sha256=options.wire_digest and encoding != Compression.NONE,
        max_size=options.max_size,
    )


def _too_large_to_hash(encoding: str, head: bytes, options: UploadOptions) -> bool:
    """Whether the image is known to exceed the inline hashing limit from the start."""
    if options.sha256_limit is None:
        return False
    declared = 0
    if encoding == Compression.ZSTD:  # the frame's content size, checked when decoded
        with contextlib.suppress(zstandard.ZstdError):
            declared = zstandard.frame_content_size(head)
    elif encoding == SPARSE:  # the header's, checked when decoded
        declared = sparseimage.declared_size(head) or 0
    return max(options.raw_at_least, declared) > options.sha256_limit


def _zstd_frames_tell_size(encoding: str, head: bytes, image: Image) -> bool:
    """zstd for a raw image, its first frame telling its size (a frame that does not is
    decoded back at the end)."""
    if encoding != Compression.ZSTD or image.file_standard != FileStandard.RAW:
        return False
    try:
        return zstandard.frame_content_size(head) > 0
    except zstandard.ZstdError:
        return False
