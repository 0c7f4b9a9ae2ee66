"""The arXiv format: the arXiv API's Atom feed, read with defusedxml."""

from __future__ import annotations

import logging
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


def parse_arxiv(text: str, origin: str) -> list[Entry]:
    feed = _atom_feed(text)
    found: list[Entry] = []
    for position, entry in enumerate(feed.iterfind(f"{ATOM}entry"), 1):
        where = f"{origin} entry {position}"
        try:
            found.append((where, _arxiv_record(entry)))
        except BadRecord as exc:
            found.append((where, str(exc)))
    return found


def _atom_feed(text: str) -> Element:
    """The feed element, parsed with DTDs and entities refused (no billion laughs, no XXE)."""
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise IngestError(
            f"the XML has a <!DOCTYPE> or entity declarations ({type(exc).__name__}); arXiv "
            "feeds never do, and they are refused so that entity expansion (billion laughs) "
            "and external entities (XXE) cannot run."
        ) from None
    except ParseError as exc:
        raise IngestError(f"invalid XML ({exc}); is the download complete?") from None
    if root.tag != f"{ATOM}feed":
        raise IngestError(
            f"the XML is not an Atom feed (its root is <{_local(root.tag)[:40]}>); "
            "expected an arXiv API response."
        )
    # arXiv reports a bad query as a feed with a single "Error" entry.
    for entry in root.iterfind(f"{ATOM}entry"):
        if "/api/errors" in (entry.findtext(f"{ATOM}id") or ""):
            message = one_line(entry.findtext(f"{ATOM}summary") or "no details")
            raise IngestError(f"arXiv answered with an error: {message[:200]}")
    return root


def _local(tag: str) -> str:
    return one_line(tag.rpartition("}")[2])


def _arxiv_record(entry: Element) -> PaperRecord:
    raw_id = (entry.findtext(f"{ATOM}id") or "").strip()
    if not raw_id:
        raise BadRecord("missing <id>")
    path = _url_path(raw_id)
    arxiv_id = parse_arxiv_id(path.partition("/abs/")[2]) if "/abs/" in path else None
    if not arxiv_id:
        raise BadRecord(f"<id> {shown(raw_id)} is not an arXiv abstract URL")
    raw_title = entry.findtext(f"{ATOM}title")
    if raw_title is None:
        raise BadRecord(f"paper {arxiv_id} is missing <title>")
    title = one_line(raw_title)
    if not has_words(title):
        raise BadRecord(f"paper {arxiv_id} has an empty <title>")
    abs_url, pdf_url = _arxiv_links(entry)
    return PaperRecord(
        source="arxiv",
        source_id=arxiv_id,
        title=title,
        abstract=tidy_paragraphs(entry.findtext(f"{ATOM}summary") or ""),
        authors=tuple(
            name
            for author in entry.iterfind(f"{ATOM}author")
            if (name := one_line(author.findtext(f"{ATOM}name") or ""))
        ),
        url=abs_url or f"https://arxiv.org/abs/{arxiv_id}",
        pdf_url=pdf_url or f"https://arxiv.org/pdf/{arxiv_id}",
        published_at=parse_utc(entry.findtext(f"{ATOM}published"), "<published>"),
    )


def _url_path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:  # "http://[broken" and other URLs urlsplit cannot take apart
        return ""


def _arxiv_links(entry: Element) -> tuple[str | None, str | None]:
    """The abstract and PDF links, told apart by attributes or, failing those, by URL path.

    Some real responses carry bare `<link href="https://arxiv.org/pdf/..."/>` with no rel,
    type or title, so the path is the one signal every variant has. A link that is not a
    usable http(s) URL is passed over, and the record keeps arXiv's own URL instead.
    """
    abs_url = pdf_url = None
    for link in entry.iterfind(f"{ATOM}link"):
        href = one_line(link.get("href") or "")
        if not is_web_url(href):
            continue
        parts = urlsplit(href)
        host = parts.hostname or ""
        if host == "arxiv.org" or host.endswith(".arxiv.org"):
            href = "https" + href[len(parts.scheme):]
        is_pdf = link.get("title") == "pdf" or link.get("type") == "application/pdf"
        if (is_pdf or parts.path.startswith("/pdf/")) and pdf_url is None:
            pdf_url = href
        elif (link.get("rel") == "alternate" or parts.path.startswith("/abs/")) and not abs_url:
            abs_url = href
    return abs_url, pdf_url

