"""The feed format: RSS 2.0 and Atom 1.0 feeds, read with defusedxml, arXiv's listings among them.

A feed is not a papers format: its items are whatever the publisher lists. An item becomes a
paper when it has a title; an arXiv item (its link or guid names an arXiv paper, as every item of
rss.arxiv.org does) gets the arXiv id, so it is one row with the same paper read from the API or
the daily-papers site, and its description loses arXiv's "arXiv:ID Announce Type: new Abstract:"
preamble; an item of arXiv's listing (it has an announce type) is dated by the listing
(`listed_at`), the day arXiv announced it. Any other item is kept under a stable id derived
from its guid (or link).

Descriptions and titles may carry HTML (RSS says nothing of their type, Atom says "html"): they are
reduced to their text, because what is stored is text and the renderer escapes it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .records import (
    BadRecord,
    Entry,
    IngestError,
    PaperRecord,
    has_words,
    is_web_url,
    one_line,
    parse_arxiv_id,
    parse_utc,
    shown,
    tidy_paragraphs,
)

log = logging.getLogger(__name__)

ATOM = "{http://www.w3.org/2005/Atom}"
DC = "{http://purl.org/dc/elements/1.1/}"
CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
ARXIV = "{http://arxiv.org/schemas/atom}"

# arXiv's listings start each description with "arXiv:2509.13332v1 Announce Type: new \nAbstract: ".
ARXIV_PREAMBLE = re.compile(r"^\s*arXiv:\S+\s+Announce Type:\s*\S+\s*(?:Abstract:\s*)?", re.I)
ARXIV_GUID = re.compile(r"^oai:arXiv\.org:(?P<id>\S+)$", re.I)
# arXiv lists authors as "A, B, C"; other feeds often write "A, B and C".
AUTHOR_SEPARATOR = re.compile(r"\s*,\s*|\s+and\s+")


@dataclass(frozen=True)
class FeedItem:
    """One item of a feed: where it was, its record or the reason it was rejected, and arXiv's
    announce type ("new", "cross", "replace", "replace-cross") when the feed gives one."""

    where: str
    outcome: PaperRecord | str
    announce_type: str | None = None


# arXiv's announce types: "new" and "cross" (new to this category) are the day's new papers;
# "replace" and "replace-cross" are new versions of older ones.
NEW_ANNOUNCEMENTS = frozenset({"new", "cross"})


def parse_feed(text: str, origin: str) -> list[Entry]:
    """The "feed" reader: every item of an RSS 2.0 or Atom 1.0 feed."""
    return [(item.where, item.outcome) for item in feed_items(text, origin)]


def parse_arxiv_listing(text: str, origin: str) -> list[Entry]:
    """The "arxiv-listing" reader: the items of an arXiv listing (rss.arxiv.org) that announce
    a new paper; replacements of older papers are passed over (`replacements` counts them)."""
    return [
        (item.where, item.outcome)
        for item in feed_items(text, origin)
        if item.announce_type is None or item.announce_type in NEW_ANNOUNCEMENTS
    ]


def replacements(data: bytes) -> int:
    """How many items of an arXiv listing announce a new version of an older paper."""
    return sum(
        item.announce_type not in NEW_ANNOUNCEMENTS
        for item in feed_items(data.decode("utf-8-sig"), "")
        if item.announce_type is not None
    )


def feed_items(text: str, origin: str) -> list[FeedItem]:
    """Every item of the feed, in order; a feed that is neither RSS 2.0 nor Atom is refused."""
    root = _xml_root(text)
    read: Callable[[Element], PaperRecord]
    if root.tag == "rss":
        channel = root.find("channel")
        elements = channel.findall("item") if channel is not None else []
        read = _rss_record
    elif root.tag == f"{ATOM}feed":
        elements = root.findall(f"{ATOM}entry")
        read = _atom_record
    else:
        raise IngestError(
            f"the XML is neither an RSS 2.0 nor an Atom 1.0 feed (its root is "
            f"<{one_line(root.tag.rpartition('}')[2])[:40]}>); check the feed's URL."
        )
    items: list[FeedItem] = []
    for position, element in enumerate(elements, 1):
        where = f"{origin} item {position}"
        announce = one_line(element.findtext(f"{ARXIV}announce_type") or "").lower() or None
        try:
            items.append(FeedItem(where, _listed(read(element), announce), announce))
        except BadRecord as exc:
            items.append(FeedItem(where, str(exc), announce))
    return items


def _listed(record: PaperRecord, announce_type: str | None) -> PaperRecord:
    """An arXiv listing's item dated by its listing: the item's date is the day arXiv announced
    the paper, which is what makes it new (as the daily-papers site's featured day does)."""
    if announce_type is None or record.source != "arxiv" or record.published_at is None:
        return record
    return replace(record, listed_at=record.published_at)


def _xml_root(text: str) -> Element:
    """The document element, parsed with DTDs and entities refused (no billion laughs, no XXE)."""
    try:
        return SafeET.fromstring(text, forbid_dtd=True)  # type: ignore[no-any-return]
    except DefusedXmlException as exc:
        raise IngestError(
            f"the XML has a <!DOCTYPE> or entity declarations ({type(exc).__name__}); feeds are "
            "refused with them so that entity expansion (billion laughs) and external entities "
            "(XXE) cannot run."
        ) from None
    except ParseError as exc:
        raise IngestError(f"invalid XML ({exc}); is the download complete?") from None


def _rss_record(item: Element) -> PaperRecord:
    body = item.findtext(f"{CONTENT}encoded") or item.findtext("description") or ""
    creators = [c.text or "" for c in item.findall(f"{DC}creator")]
    if item.find("pubDate") is not None:
        published = _rfc822(item.findtext("pubDate"), "<pubDate>")
    else:
        published = parse_utc(one_line(item.findtext(f"{DC}date") or ""), "<dc:date>")
    return _record(
        _Text(item.findtext("title") or "", html=True),
        _Text(body, html=True),
        link=one_line(item.findtext("link") or ""),
        guid=one_line(item.findtext("guid") or ""),
        authors=_authors(creators or [item.findtext("author") or ""]),
        published_at=published,
    )


def _atom_record(entry: Element) -> PaperRecord:
    title = entry.find(f"{ATOM}title")
    body = entry.find(f"{ATOM}summary")
    body = body if body is not None else entry.find(f"{ATOM}content")
    names = [a.findtext(f"{ATOM}name") or "" for a in entry.findall(f"{ATOM}author")]
    names += [c.text or "" for c in entry.findall(f"{DC}creator")]
    date = entry.findtext(f"{ATOM}published") or entry.findtext(f"{ATOM}updated")
    return _record(
        _atom_text(title),
        _atom_text(body),
        link=_atom_link(entry),
        guid=one_line(entry.findtext(f"{ATOM}id") or ""),
        authors=_authors(names),
        published_at=parse_utc(one_line(date or ""), "<published>"),
    )


def _atom_text(element: Element | None) -> _Text:
    """An Atom text construct: plain unless its type says HTML (Atom's default is text)."""
    if element is None:
        return _Text("", html=False)
    return _Text(element.text or "", html=element.get("type") in ("html", "xhtml"))


def _atom_link(entry: Element) -> str:
    """The entry's web page: its rel="alternate" link (Atom's default rel), else the first."""
    links = entry.findall(f"{ATOM}link")
    for link in links:
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return one_line(link.get("href") or "")
    return one_line(links[0].get("href") or "") if links else ""


@dataclass(frozen=True)
class _Text:
    """A title or description as the feed gave it, and whether it may hold HTML."""

    raw: str
    html: bool

    def line(self) -> str:
        return one_line(_without_html(self.raw) if self.html else self.raw)

    def paragraphs(self) -> str:
        return tidy_paragraphs(_without_html(self.raw) if self.html else self.raw)


def _record(
    title: _Text,
    body: _Text,
    *,
    link: str,
    guid: str,
    authors: tuple[str, ...],
    published_at: datetime | None,
) -> PaperRecord:
    arxiv_id = _arxiv_id(link, guid)
    if arxiv_id:
        # arXiv's own text is plain (LaTeX such as "$a<b$" included): never read it as HTML.
        name = one_line(title.raw)
        if not has_words(name):
            raise BadRecord(f"paper {arxiv_id} has an empty <title>")
        return PaperRecord(
            source="arxiv",
            source_id=arxiv_id,
            title=name,
            abstract=tidy_paragraphs(ARXIV_PREAMBLE.sub("", body.raw, count=1)),
            authors=authors,
            url=f"https://arxiv.org/abs/{arxiv_id}",
            pdf_url=f"https://arxiv.org/pdf/{arxiv_id}",
            published_at=published_at,
        )
    name = title.line()
    if not has_words(name):
        raise BadRecord("an item with an empty <title>")
    identity = guid or link
    if not identity:
        raise BadRecord(f"item {shown(name)} has neither a link nor a guid to know it by")
    return PaperRecord(
        source="feed",
        source_id="feed:" + hashlib.sha1(identity.encode("utf-8")).hexdigest()[:20],
        title=name,
        abstract=body.paragraphs(),
        authors=authors,
        url=link if is_web_url(link) else None,
        pdf_url=None,
        published_at=published_at,
    )


def _arxiv_id(link: str, guid: str) -> str | None:
    """The arXiv id an item names by its link (https://arxiv.org/abs/ID) or guid (oai:...)."""
    if match := ARXIV_GUID.match(guid):
        return parse_arxiv_id(match.group("id"))
    for url in (link, guid):
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        host = (parts.hostname or "").lower()
        if (host == "arxiv.org" or host.endswith(".arxiv.org")) and "/abs/" in parts.path:
            return parse_arxiv_id(parts.path.partition("/abs/")[2])
    return None


def _authors(values: list[str]) -> tuple[str, ...]:
    names = (one_line(name) for value in values for name in AUTHOR_SEPARATOR.split(value))
    return tuple(name for name in names if name)


def _rfc822(value: str | None, name: str) -> datetime | None:
    """An RSS date (RFC 822, "Thu, 18 Sep 2025 00:00:00 -0400") as an aware UTC datetime."""
    if not value or not value.strip():
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        raise BadRecord(f"{name} {shown(value)} is not an RFC 822 date") from None
    return parse_utc(parsed.isoformat(), name)


class _TextOnly(HTMLParser):
    """Collects an HTML fragment's text; paragraph-like tags become line breaks."""

    BREAKS = frozenset({"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "blockquote"})
    HIDDEN = frozenset({"script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag in self.BREAKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def _without_html(text: str) -> str:
    """An HTML fragment's text: tags out, entities decoded, paragraphs kept."""
    if "<" not in text and "&" not in text:
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)
