"""Uploading a new version: a plan chosen once, stages that follow it, then the commit.

* :mod:`.plan` — what is done with this upload's bytes, chosen once from the
  request, the image and the body's first bytes: decoded, mapped and stored
  raw (sparse); decoded and mapped but stored as sent (a gzip image sent
  gzip); or stored as sent undecoded (a large zstd upload of a raw image,
  whose SHA-256 is left to a job anyway: that job decodes, checks and maps
  it). Also whether the whole-image SHA-256 is computed now (up to
  ``BAAS_UPLOAD_INLINE_SHA256_MAX``, or all of it when the client sends or
  asks for a digest), and whether the bytes as sent are hashed.
* :mod:`.stages` — decoder → raw bytes (zeros become holes, size and file
  standard checked, SHA-256) → data map → writer, on the threads of one
  :class:`catalogue.stages.Stages` group, which owns starting, hand-off,
  errors, cancellation and joining.
* :mod:`.checks` — the size limit, the file standard (a qcow2 image takes
  only qcow2 data without a backing file; a raw image never qcow2 data), a
  sparse image's CRC-32s, zstd frame checksums, ``qemu-img check``.
* :mod:`.receiver` — :class:`VersionReceiver`, what callers feed.
* :mod:`.commit` — :func:`version_upload`: the expected digest, fsync, the
  next number under a lock on the image row, the row and its data map.
* :mod:`.compose` — a delta upload: a base version's data plus a disk's
  changes (a sparse image whose "don't care" chunks mean "as in the base"),
  fed to a receiver and committed like any upload, ``based_on`` recorded.
* :mod:`.resumable` — resumable uploads (draft-ietf-httpbis-resumable-upload): the
  bytes as sent kept between requests, then fed through a receiver and committed.

Any failure before the commit leaves nothing but a ``.part`` file that is
removed at once (or, after a crash, by the stale-upload purge).
"""

from __future__ import annotations

from catalogue.services.uploads.commit import version_upload
from catalogue.services.uploads.plan import Storing, UploadOptions, UploadPlan, plan_upload
from catalogue.services.uploads.receiver import ReceivedUpload, VersionReceiver

__all__ = [
    "ReceivedUpload",
    "Storing",
    "UploadOptions",
    "UploadPlan",
    "VersionReceiver",
    "plan_upload",
    "version_upload",
]
