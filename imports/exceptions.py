"""The imports' domain errors, each a kind of ``baas_site.exceptions``."""

from __future__ import annotations

from baas_site.exceptions import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unusable


class ImportNotFound(NotFound):
    default_detail = "No such import."


class ImportForbidden(Forbidden):
    default_detail = "You may not import into this image."


class ImportInvalid(Invalid):
    """The request to import is malformed (fields, reference, URL); ``field`` names the field."""

    def __init__(self, message: str, field: str = "non_field_errors") -> None:
        super().__init__({field: [message]})


class ImportConflict(Conflict):
    default_detail = "The import has already ended."


class ImportRefused(Unusable):
    """What the import found cannot become a version: the reason says why; nothing was stored."""

    default_detail = "The import was refused; nothing was stored."
    default_code = "import_refused"


class ImportTooLarge(TooLarge):
    default_detail = "The import is larger than the image may hold; nothing was stored."
    default_code = "too_large"


class ImportStopped(Exception):
    """The job was cancelled while it ran (the tools were stopped)."""
