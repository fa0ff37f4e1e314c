"""The catalogue's domain errors, each a kind of ``baas_site.exceptions``.

Services and selectors raise them; ``baas_site.errors`` alone says what each
kind answers over HTTP and how a page shows it.
"""

from __future__ import annotations

from baas_site.exceptions import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StorageFull,
    TooLarge,
    Unusable,
)
from baas_site.exceptions import (
    LengthRequired as _LengthRequired,
)


class ImageNotFound(NotFound):
    """No such image, or not the actor's to read."""

    default_detail = "No such image."


class VersionNotFound(NotFound):
    """No such version of an image the actor may read."""

    default_detail = "No such version."


class SetupNotFound(NotFound):
    """No such setup, or not the actor's to see."""

    default_detail = "No such setup."


class NotYours(Forbidden):
    """The actor may read the image or setup but not do this to it."""

    default_detail = "You may not do this."


class InvalidInput(Invalid):
    """A field or value of a request about images or setups is wrong."""


class ImageConflict(Conflict):
    """The request contradicts the image's state (e.g. it is pinned in a setup)."""

    default_detail = "This conflicts with the image's current state."
    default_code = "conflict"


class SetupConflict(Conflict):
    """The request contradicts a setup's state (it is in use, its name is taken, …)."""

    default_detail = "This conflicts with the current state."
    default_code = "conflict"


class BadUpload(Unusable):
    """The uploaded bytes are wrong: not the image's format, corrupt, cut short, or mismatched."""

    default_detail = "The upload was refused."
    default_code = "bad_upload"


class ClientDisconnected(BadUpload):
    """The body ended before ``Content-Length`` bytes arrived."""

    default_detail = "The upload ended before all its bytes arrived; nothing was stored."
    default_code = "incomplete_upload"


class UploadTooLarge(TooLarge):
    default_detail = "The image is larger than this server accepts."
    default_code = "too_large"


class InsufficientStorage(StorageFull):
    default_detail = "The image store is full; nothing was stored. Ask an administrator."
    default_code = "storage_full"


class LengthRequired(_LengthRequired):
    default_detail = "Send the upload with a Content-Length (or chunked through gunicorn)."
    default_code = "length_required"


# --- Resumable uploads (catalogue.services.uploads.resumable) -----------------------------


class UploadNotFound(NotFound):
    """No such upload resource, or not the actor's, or abandoned; ``state``/``at`` say why
    when the server still remembers it (expired, failed)."""

    default_detail = "No such upload."
    default_code = "not_found"

    def __init__(self, detail: str | None = None, *, state: str = "", at: str = ""):
        super().__init__(detail)
        self.state = state
        self.at = at


class UploadOffsetMismatch(Conflict):
    """The append does not start where the upload is (its acknowledged offset)."""

    default_code = "mismatching_upload_offset"

    def __init__(self, *, expected: int, provided: int):
        super().__init__(
            f"This upload has {expected} bytes, not {provided}: resume from byte {expected}."
        )
        self.expected = expected
        self.provided = provided


class UploadBusy(Conflict):
    """Another request is appending to this upload right now."""

    default_detail = (
        "Another request is appending to this upload right now. If it was yours and was cut "
        "off, the server notices when its connection closes: ask for the offset again in a "
        "few seconds."
    )
    default_code = "upload_busy"
    retry_after = 5

    def __init__(self, *, offset: int):
        super().__init__()
        self.offset = offset


class UploadCompleted(BadUpload):
    """The upload is complete: nothing can be appended any more."""

    default_code = "completed_upload"


class UploadLengthMismatch(BadUpload):
    """The bytes sent contradict the upload's announced length (Upload-Length)."""

    default_code = "inconsistent_upload_length"


class TooManyUploads(Conflict):
    """The user has as many unfinished resumable uploads as allowed."""

    default_code = "too_many_uploads"

    def __init__(self, detail: str, *, tokens: list[str]):
        super().__init__(detail)
        self.tokens = tokens
