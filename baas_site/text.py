"""Readable one-line text from whatever a failure produced (Django-free).

Failure reasons end up on pages and in API answers that people read: an HTML
error page or a Python traceback copied there is noise at best and a leak of
the server's insides at worst. :func:`plain_text` is the one place that turns
such a value into a sentence.
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

ELLIPSIS = "…"
TRACEBACK_HEADER = "Traceback (most recent call last):"
# Only real HTML elements count as markup, so "expected <uuid>" stays as written.
_HTML_TAG = re.compile(
    r"<!doctype\s+html|<!--|</?(?:html|head|body|title|meta|link|script|style|div|span|p|br|hr|"
    r"h[1-6]|pre|code|table|thead|tbody|tr|td|th|ul|ol|li|dl|dt|dd|a|b|i|em|strong|center|"
    r"main|header|footer|section|form|input|button|img)\b[^>]*>",
    re.IGNORECASE,
)
_INVISIBLE = frozenset({"script", "style", "head"})
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


class _TextOnly(HTMLParser):
    """Collects the text a browser would show, without scripts, styles or the head."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _INVISIBLE:
            self._hidden += 1
        elif tag in ("br", "p", "div", "li", "tr", "h1", "h2", "h3", "pre"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _INVISIBLE and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def looks_like_html(value: str) -> bool:
    """Whether ``value`` holds HTML markup (a page, or a fragment of one)."""
    return bool(_HTML_TAG.search(value))


def _html_text(value: str) -> str:
    title = _TITLE.search(value)
    parser = _TextOnly()
    parser.feed(value)
    parser.close()
    body = "".join(parser.parts)
    if title:
        heading = unescape(title.group(1)).strip()
        return f"{heading}: {body}" if heading and heading not in body[:500] else body
    return body


def _traceback_text(value: str) -> str:
    """A traceback reduced to what came before it and its final exception line(s)."""
    before, _, rest = value.partition(TRACEBACK_HEADER)
    lines = rest.rsplit(TRACEBACK_HEADER, 1)[-1].splitlines()  # chained: the last one ends it
    # The exception starts at the first unindented line after the last frame.
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    start = frames[-1] + 1 if frames else 0
    while start < len(lines) and lines[start][:1] in (" ", "\t"):
        start += 1
    tail = " ".join(line.strip() for line in lines[start:] if line.strip())
    return f"{before.strip()} {tail}".strip()


def plain_text(value: object, limit: int = 2000) -> str:
    """``value`` as one readable line of at most ``limit`` characters.

    Contract:

    - ``None`` and empty values give ``""``; other non-strings are ``str()``-ed.
    - HTML (a whole page or a fragment with real HTML tags) is reduced to the
      text a browser would show: the page's ``<title>`` first, then the body's
      text; scripts, styles and the head are dropped; entities are decoded.
      Text that merely contains ``<something>`` is not treated as HTML.
    - A Python traceback is reduced to the text before it plus its final
      exception line (``KeyError: 'mount'``); with chained exceptions, the last.
    - Control characters are removed and every run of whitespace (newlines
      included) becomes one space.
    - When longer than ``limit``, it is cut at ``limit - 1`` characters (at a
      word boundary when one is near) and ends with "…". ``limit`` must be ≥ 1.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if looks_like_html(text):
        text = _html_text(text)
    if TRACEBACK_HEADER in text:
        text = _traceback_text(text)
    text = _SPACE.sub(" ", _CONTROL.sub("", text)).strip()
    return _bounded(text, limit)


def _bounded(text: str, limit: int) -> str:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit * 3 // 4:
        cut = cut[:space]
    return cut.rstrip() + ELLIPSIS
