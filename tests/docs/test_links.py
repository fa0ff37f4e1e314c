"""The docs' relative links lead somewhere: every file exists, every #anchor is a heading.

A newcomer follows the README to docs/ and back; a link that a move or a renamed
heading broke sends them nowhere. External links (http…, mailto:) are not
fetched: no network beyond loopback in the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target), outside code spans; the target up to a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*```")
CODE_SPAN = re.compile(r"`[^`]*`")


def _prose(path: Path) -> list[str]:
    """The file's lines outside fenced blocks, code spans removed."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's) gives a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m[1]) for line in _prose(path) if (m := re.match(r"^#+\s+(.*)$", line))}


def links(path: Path) -> list[str]:
    return [target for line in _prose(path) for target in LINK.findall(line)]


def _broken(source: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return None
    file_part, _, anchor = target.partition("#")
    destination = (source.parent / file_part).resolve() if file_part else source
    if not destination.exists():
        return f"{target}: no such file"
    if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
        return f"{target}: no heading #{anchor} in {destination.relative_to(ROOT)}"
    return None


def test_the_docs_have_links_to_check():
    assert sum(len(links(path)) for path in DOCS) > 20


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(path):
    broken = [why for target in links(path) if (why := _broken(path, target))]
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_slug_is_githubs():
    assert slug("5b. Network mounts: nothing to write") == "5b-network-mounts-nothing-to-write"
    assert slug("An upload's way from URL to file") == "an-uploads-way-from-url-to-file"
    assert slug("`GET /api/boot`: the script") == "get-apiboot-the-script"


def test_the_readme_shows_screenshots_small_enough_to_load_fast():
    images = [t for t in links(ROOT / "README.md") if t.endswith(".png")]
    assert len(images) >= 2, "The README's tour shows two screenshots"
    for target in images:
        assert (ROOT / target).stat().st_size < 1 << 20, f"{target} is over 1 MiB"
