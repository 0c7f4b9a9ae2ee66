"""Sources by name: what a daily service reads every day, configured in INGEST_SOURCES.

A fixed URL or file gives the same document every time; a daily service needs sources that know
what "today" is. Each name below is one connector, and each reads through `read_source` (so
through `fetch`: its deadline, its size cap, public addresses only) and `formats.parse` (so every
record is checked the same way as a file's):

- `arxiv:CAT` — arXiv's listing of the day's new submissions in a category (rss.arxiv.org,
  RSS 2.0; `arxiv:cs.CL+cs.LG` for several). Replacements of older papers are skipped: they
  are not new, and the listing dates them by the day of the new version.
- `arxiv-api:CAT` — the arXiv query API, newest submissions first (`cat:CAT`,
  sortBy=submittedDate), page after page until a page reaches back past the window
  (LOOKBACK_DAYS), at most ARXIV_API_MAX_RESULTS, waiting ARXIV_API_DELAY_SECONDS between
  requests as arXiv's terms ask (one request every three seconds, shared by the listing).
- `daily-papers` — the daily-papers API for today and yesterday (UTC), so that yesterday's
  papers are read again with the upvotes they gathered late; `daily-papers:YYYY-MM-DD` for one
  day.
- `rss:URL` (or `atom:URL`) — any RSS 2.0 or Atom 1.0 feed.

Anything else is a URL or a path, read as before. A connector reads all its requests before
anything is stored, so a failure (one line, naming the source and the request) stores nothing
of that source and the next run reads it again; storing is the same idempotent upsert as for
files, which refreshes the engagement counts of papers already stored.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from .feeds import replacements
from .formats import parse
from .records import IngestError, Note, ParseResult, shown
from .sources import read_source

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

ARXIV_LISTING_URL = "https://rss.arxiv.org/rss/{category}"
ARXIV_API_URL = "https://export.arxiv.org/api/query"
DAILY_PAPERS_URL = "https://huggingface.co/api/daily_papers"
# The daily-papers API's largest page; a day lists far fewer papers (20 to 80).
DAILY_PAPERS_LIMIT = 100
# arXiv answers at most 2,000 results per request and 30,000 per query (its API manual).
ARXIV_API_MAX_PAGE = 2000

CONNECTOR_NAMES = ("arxiv", "arxiv-api", "daily-papers", "rss", "atom")
# An archive ("hep-th", "cs") or a subject class ("cs.CL", "astro-ph.GA", "q-bio.NC").
CATEGORY = re.compile(r"^[a-z][a-z-]*(?:\.[A-Za-z][A-Za-z-]*)?$")
# Where a comma in INGEST_SOURCES starts a new source: before a connector name or a URL, so
# that a comma inside a URL (arXiv's id_list=a,b) stays part of it.
SOURCE_SEPARATOR = re.compile(
    r"\s+|,\s*(?=(?:arxiv|arxiv-api|daily-papers|rss|atom)(?::|,|\s|$)|https?://)"
)


def source_list(text: str) -> list[str]:
    """The sources INGEST_SOURCES names, in order: split at spaces, and at commas that start
    a new name or URL."""
    parts = (part.strip(",") for part in SOURCE_SEPARATOR.split(text))
    return [part for part in parts if part]


@dataclass(frozen=True)
class ConnectorOptions:
    """What the connectors need from the settings, and the clock (tests set `now`)."""

    timeout: float = 20.0
    allow_private_networks: bool = False
    window_days: float = 3.0
    arxiv_listing_url: str = ARXIV_LISTING_URL
    arxiv_api_url: str = ARXIV_API_URL
    arxiv_api_delay_seconds: float = 3.0
    arxiv_api_page_size: int = 200
    arxiv_api_max_results: int = 2000
    daily_papers_url: str = DAILY_PAPERS_URL
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectorOptions:
        """The options the deployment's settings give."""
        return cls(
            timeout=settings.http_timeout,
            allow_private_networks=settings.ingest_allow_private_networks,
            window_days=settings.lookback_days,
            arxiv_listing_url=settings.arxiv_listing_url,
            arxiv_api_url=settings.arxiv_api_url,
            arxiv_api_delay_seconds=settings.arxiv_api_delay_seconds,
            arxiv_api_page_size=settings.arxiv_api_page_size,
            arxiv_api_max_results=settings.arxiv_api_max_results,
            daily_papers_url=settings.daily_papers_url,
        )


class Pacer:
    """Keeps `delay` seconds between the end of one request to a service and the next one.

    One pacer serves a whole ingest run, so two arXiv sources in one run are paced together:
    arXiv's limit (one request every three seconds) is per client, across its API and listings.
    """

    def __init__(
        self,
        delay: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.delay = delay
        self._clock, self._sleep = clock, sleep
        self._last: dict[str, float] = {}

    def wait(self, service: str) -> None:
        """Sleep until `service` may be asked again."""
        last = self._last.get(service)
        if last is not None and (left := last + self.delay - self._clock()) > 0:
            self._sleep(left)

    def done(self, service: str) -> None:
        self._last[service] = self._clock()


@dataclass
class Harvest:
    """What a connector read: its records (parsed and checked as a file's), and what it passed
    over on purpose (a count and why), which is neither a record nor a rejection."""

    result: ParseResult
    skipped: int = 0
    skipped_why: str = ""


@dataclass
class _Run:
    """One connector's reading: the options, the run's pacer, and the name to report."""

    origin: str
    options: ConnectorOptions
    pacer: Pacer

    def get(self, url: str, service: str | None = None) -> bytes:
        """The body of `url` through `fetch`; a failure names this source."""
        if service:
            self.pacer.wait(service)
        try:
            return read_source(
                url,
                self.options.timeout,
                allow_private_networks=self.options.allow_private_networks,
            )
        except IngestError as exc:
            raise IngestError(f"{self.origin}: {exc}") from None
        finally:
            if service:
                self.pacer.done(service)

    def parse(self, data: bytes, fmt: str, where: str) -> ParseResult:
        try:
            return parse(data, fmt, origin=where)
        except IngestError as exc:
            raise IngestError(f"{where}: {exc}") from None


def is_connector(origin: str) -> bool:
    """Whether `origin` names a connector rather than a URL or a file."""
    name = origin.partition(":")[0]
    return name in CONNECTOR_NAMES and "://" not in name


def harvest(origin: str, options: ConnectorOptions, pacer: Pacer) -> Harvest:
    """Read the source a connector name stands for; errors are one line that names it."""
    name, _, argument = origin.partition(":")
    run = _Run(origin, options, pacer)
    if name == "arxiv":
        return _arxiv_listing(run, _categories(origin, argument))
    if name == "arxiv-api":
        return _arxiv_api(run, _categories(origin, argument))
    if name == "daily-papers":
        return _daily_papers(run, _days(origin, argument, options.now()))
    if name in ("rss", "atom"):
        if not argument.startswith(("http://", "https://")):
            raise IngestError(f"{origin}: give the feed's http(s) URL after {name}:.")
        return Harvest(run.parse(run.get(argument), "feed", origin))
    raise IngestError(f"{shown(origin)} is not a source name; use one of {_NAMES}.")


_NAMES = "arxiv:CAT, arxiv-api:CAT, daily-papers, daily-papers:YYYY-MM-DD, rss:URL, a URL or a path"


def _categories(origin: str, argument: str) -> list[str]:
    categories = [c for c in argument.split("+") if c]
    bad = [c for c in categories if not CATEGORY.match(c)]
    if not categories or bad:
        raise IngestError(
            f"{origin}: name arXiv categories such as cs.CL or hep-th, joined by + "
            "(e.g. arxiv:cs.CL+cs.LG)."
        )
    return categories


# --- arXiv's listing of new submissions -------------------------------------------------------


def _arxiv_listing(run: _Run, categories: list[str]) -> Harvest:
    url = run.options.arxiv_listing_url.format(category="+".join(categories))
    data = run.get(url, service="arxiv")
    result = run.parse(data, "arxiv-listing", run.origin)
    return Harvest(result, replacements(data), "replacements of older papers")


# --- the arXiv query API ----------------------------------------------------------------------

TOTAL_RESULTS = re.compile(rb"<opensearch:totalResults[^>]*>\s*(\d+)\s*<")


def _arxiv_api(run: _Run, categories: list[str]) -> Harvest:
    """Newest submissions first, page by page, until a page reaches back past the window."""
    options = run.options
    query = " OR ".join(f"cat:{c}" for c in categories)
    page_size = max(1, min(options.arxiv_api_page_size, ARXIV_API_MAX_PAGE))
    window_start = options.now() - timedelta(days=options.window_days)
    pages: list[ParseResult] = []
    start = 0
    while start < options.arxiv_api_max_results:
        size = min(page_size, options.arxiv_api_max_results - start)
        params = {
            "search_query": query,
            "sortBy": "submittedDate",
            "sortOrder": "descending",
            "start": start,
            "max_results": size,
        }
        data = run.get(f"{options.arxiv_api_url}?{urlencode(params, quote_via=quote)}", "arxiv")
        page = run.parse(data, "arxiv", f"{run.origin} page {len(pages) + 1}")
        pages.append(page)
        start += size
        entries = len(page.records) + len(page.rejected)
        dates = [r.published_at for r in page.records if r.published_at is not None]
        total = TOTAL_RESULTS.search(data)
        if (
            entries < size
            or (dates and min(dates) < window_start)
            or (total and start >= int(total.group(1)))
        ):
            break
    else:
        pages[-1].notes.append(
            Note(
                run.origin,
                f"stopped at ARXIV_API_MAX_RESULTS={options.arxiv_api_max_results} "
                "before reaching the start of the window; raise it to read the whole window",
            )
        )
    return Harvest(_merged(pages, "arxiv"))


# --- the daily-papers API ---------------------------------------------------------------------


def _days(origin: str, argument: str, now: datetime) -> list[date]:
    """The days to read: the one named, else today and yesterday in UTC."""
    if argument:
        try:
            return [date.fromisoformat(argument)]
        except ValueError:
            raise IngestError(
                f"{origin}: {shown(argument)} is not a date; use daily-papers:YYYY-MM-DD."
            ) from None
    today = now.astimezone(UTC).date()
    return [today, today - timedelta(days=1)]


def _daily_papers(run: _Run, days: list[date]) -> Harvest:
    results = []
    for day in days:
        params = {"date": day.isoformat(), "limit": DAILY_PAPERS_LIMIT}
        data = run.get(f"{run.options.daily_papers_url}?{urlencode(params)}")
        results.append(run.parse(data, "daily-papers", f"{run.origin} {day.isoformat()}"))
    return Harvest(_merged(results, "daily-papers"))


def _merged(results: list[ParseResult], fmt: str) -> ParseResult:
    """Several documents' records as one, each paper once (the first document's wins: a paper
    on two pages, or featured on two days, is one paper read twice, not a mistake)."""
    merged = ParseResult(records=[], rejected=[], format=fmt)
    seen: set[str] = set()
    for result in results:
        merged.rejected.extend(result.rejected)
        merged.notes.extend(result.notes)
        for record in result.records:
            if record.source_id not in seen:
                seen.add(record.source_id)
                merged.records.append(record)
    return merged


def with_fetch_limits(
    options: ConnectorOptions | None, timeout: float, allow_private_networks: bool
) -> ConnectorOptions:
    """`options` with the fetch limits `ingest` was given, which win over the options'."""
    return replace(
        options or ConnectorOptions(),
        timeout=timeout,
        allow_private_networks=allow_private_networks,
    )
