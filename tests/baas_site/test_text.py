"""plain_text: failure reasons as one readable line, never HTML or a traceback."""

from __future__ import annotations

import pytest
from django.views.debug import technical_500_response

from baas_site.text import plain_text

TRACEBACK = """Traceback (most recent call last):
  File "/srv/baas/flashing/authentication.py", line 88, in authenticate
    grant = grants["mount"]
            ~~~~~~^^^^^^^^^
KeyError: 'mount'
"""


def django_debug_page() -> str:
    """The page Django shows for an unhandled exception with DEBUG on (issue 16's reason)."""
    from django.test import RequestFactory

    request = RequestFactory().get("/api/image/0f3c/1/map")
    try:
        {}["mount"]
    except KeyError as exc:
        return technical_500_response(request, type(exc), exc, exc.__traceback__).content.decode()
    raise AssertionError("unreachable")


@pytest.mark.django_db
def test_djangos_debug_page_becomes_its_title_and_message(settings):
    settings.DEBUG = True
    page = django_debug_page()
    assert len(page) > 10_000
    text = plain_text(page, 200)
    assert text.startswith("KeyError at /api/image/0f3c/1/map")
    assert "'mount'" in text
    assert "<" not in text and "\n" not in text and len(text) <= 200


def test_a_traceback_becomes_its_last_line():
    assert plain_text(TRACEBACK) == "KeyError: 'mount'"
    assert plain_text(f"agent failed: {TRACEBACK}") == "agent failed: KeyError: 'mount'"


def test_chained_tracebacks_end_with_the_last_exception():
    chained = (
        TRACEBACK
        + "\nDuring handling of the above exception, another exception occurred:\n\n"
        + TRACEBACK.replace("KeyError: 'mount'", "OSError: [Errno 28] No space left on device")
    )
    assert plain_text(chained) == "OSError: [Errno 28] No space left on device"


def test_plain_words_stay_as_written_even_with_angle_brackets():
    assert plain_text("expected <uuid>/<n>, got 3 < 4") == "expected <uuid>/<n>, got 3 < 4"


def test_fragments_lose_their_tags_and_entities_are_decoded():
    assert plain_text("<p>Disk <b>/dev/sda</b> &amp; /dev/sdb</p>") == "Disk /dev/sda & /dev/sdb"


def test_it_is_one_line_without_control_characters():
    assert plain_text("first\r\n\tsecond\x00\x1b[31m third ") == "first second[31m third"


def test_it_is_bounded_with_an_ellipsis():
    text = plain_text("word " * 1000, 100)
    assert len(text) <= 100 and text.endswith("…")
    assert plain_text("x" * 5000).endswith("…") and len(plain_text("x" * 5000)) == 2000
    assert plain_text("short", 5) == "short"


def test_nothing_gives_an_empty_string():
    assert plain_text(None) == "" and plain_text("") == "" and plain_text("  \n ") == ""
    assert plain_text(ValueError("bad size")) == "bad size"
