"""Sources by name (digest/ingest/connectors.py) against recorded responses on a loopback server.

The server below answers as arXiv's listing, arXiv's API and the daily-papers API would, from
the real responses in inputs/real-inputs/ and the fixtures in tests/data/ingest/connectors/
(README there says how each was made), and notes when each request arrived. Every request goes
through `fetch`, so the tests turn on INGEST_ALLOW_PRIVATE_NETWORKS to reach 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import db
from digest.cli import main
from digest.ingest import ConnectorOptions, IngestReport, ingest, source_list
from digest.ingest.connectors import Pacer
from digest.ingest.formats import parse
from digest.models import Paper, paper_new_at
from digest.settings import Settings, SettingsError

DATA = Path(__file__).parent / "data" / "ingest"
FIXTURES = DATA / "connectors"
REAL = Path(__file__).parent.parent / "inputs" / "real-inputs"
LISTING = (FIXTURES / "arxiv_listing_cs.AI_2026-07-13.xml").read_bytes()
EMPTY_LISTING = (FIXTURES / "arxiv_listing_physics_empty_2025-12-31.xml").read_bytes()
API_PAGE_1 = (REAL / "arxiv_new-format_2026-07_cs.AI-OR-cs.LG_50entries.xml").read_bytes()
API_PAGE_2 = (FIXTURES / "arxiv_api_cs.AI-OR-cs.LG_page2.xml").read_bytes()
DAILY_0713 = (REAL / "hf_daily_papers_2026-07-13_25entries.json").read_bytes()
JOURNAL_FEED = (FIXTURES / "journal_feed.rss").read_bytes()

# Page 1 of the API response holds submissions of 2026-07-10 13:48 to 17:59 UTC.
MONDAY_NOON = datetime(2026, 7, 13, 12, 0, tzinfo=UTC)

Answer = tuple[int, bytes]
Route = Callable[[dict[str, str]], Answer]


@dataclass
class SourceServer:
    """A real HTTP server on 127.0.0.1: path -> route(query) -> (status, body)."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def paths(self, path: str) -> list[dict[str, str]]:
        """The queries of the requests made to `path`, in order."""
        return [query for _, p, query in self.requests if p == path]


@pytest.fixture
def server() -> Iterator[SourceServer]:
    state = SourceServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            state.requests.append((time.monotonic(), parts.path, query))
            route = state.routes.get(parts.path)
            status, body = route(query) if route else (404, b"not found")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def always(body: bytes, status: int = 200) -> Route:
    return lambda query: (status, body)


def by_start(pages: dict[str, bytes]) -> Route:
    """The arXiv API: one answer per `start`; any other page is a test failure (500)."""
    return lambda query: (
        (200, pages[query["start"]]) if query.get("start") in pages else (500, b"page not recorded")
    )


def by_date(days: dict[str, bytes]) -> Route:
    return lambda query: (200, days.get(query.get("date", ""), b"[]"))


def options(
    server: SourceServer, now: datetime = MONDAY_NOON, **changes: object
) -> ConnectorOptions:
    base = ConnectorOptions(
        window_days=3,
        arxiv_listing_url=f"{server.url}/rss/{{category}}",
        arxiv_api_url=f"{server.url}/api/query",
        daily_papers_url=f"{server.url}/api/daily_papers",
        arxiv_api_delay_seconds=0.01,
        arxiv_api_page_size=50,
        now=lambda: now,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(session: Session, sources: list[str], opts: ConnectorOptions) -> IngestReport:
    return ingest(session, sources, timeout=5, allow_private_networks=True, connectors=opts)


@pytest.fixture
def sqlite_session(sqlite_settings: Settings) -> Iterator[Session]:
    """Most of these tests are about HTTP and formats: SQLite alone keeps them quick."""
    with db.session_factory(sqlite_settings)() as session:
        yield session


def stored(session: Session) -> dict[str, Paper]:
    return {p.source_id: p for p in session.scalars(select(Paper))}


def paper_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Paper)) or 0


# --- arXiv's listing --------------------------------------------------------------------------


def test_the_arxiv_listing_stores_the_days_new_papers_once_and_skips_replacements(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/rss/cs.AI"] = always(LISTING)

    first = run(sqlite_session, ["arxiv:cs.AI"], options(server))
    again = run(sqlite_session, ["arxiv:cs.AI"], options(server))

    assert first.summary().splitlines()[0] == (
        "arxiv:cs.AI (arxiv-listing): 4 records, 4 inserted, 0 updated, 0 unchanged, "
        "0 rejected, 2 skipped (replacements of older papers)"
    )
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 4)
    papers = stored(sqlite_session)
    assert sorted(papers) == ["2607.09586", "2607.09600", "2607.09623", "2607.09649"]
    paper = papers["2607.09649"]
    assert paper.source == "arxiv" and paper.url == "https://arxiv.org/abs/2607.09649"
    assert paper.abstract.startswith("Concept-based explainable artificial intelligence")
    assert paper.authors[:2] == ["Mohadeseh Mollapour", "Koorosh Aslansefat"]
    # The listing's day, 13 July 00:00 in New York.
    assert paper.published_at == datetime(2026, 7, 13, 4, 0, tzinfo=UTC)
    assert len(server.paths("/rss/cs.AI")) == 2


def test_the_listing_dates_its_papers_by_the_day_arxiv_announced_them(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/rss/cs.AI"] = always(LISTING)
    announced = datetime(2026, 7, 13, 4, 0, tzinfo=UTC)  # 13 July 00:00 in New York

    records = parse(LISTING, "arxiv-listing", origin="listing").records
    run(sqlite_session, ["arxiv:cs.AI"], options(server))

    assert {r.listed_at for r in records} == {announced}
    assert {p.listed_at for p in stored(sqlite_session).values()} == {announced}
    # New on the day of the listing: the day's candidate query finds every one of them.
    new_today = select(func.count()).where(paper_new_at() >= announced - timedelta(hours=1))
    assert sqlite_session.scalar(new_today) == 4


def test_an_empty_listing_is_a_day_without_papers_and_categories_join_with_plus(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/rss/physics+hep-th"] = always(EMPTY_LISTING)

    report = run(sqlite_session, ["arxiv:physics+hep-th"], options(server))

    assert report.ok and report.records == 0
    assert report.sources[0].line().startswith("arxiv:physics+hep-th (arxiv-listing): 0 records")


# --- the arXiv API ----------------------------------------------------------------------------


def test_the_arxiv_api_pages_back_to_the_start_of_the_window_and_no_further(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/api/query"] = by_start({"0": API_PAGE_1, "50": API_PAGE_2})

    report = run(sqlite_session, ["arxiv-api:cs.AI+cs.LG"], options(server))

    assert report.ok, report.summary()
    assert [q["start"] for q in server.paths("/api/query")] == ["0", "50"]
    first = server.paths("/api/query")[0]
    assert first == {
        "search_query": "cat:cs.AI OR cat:cs.LG",
        "sortBy": "submittedDate",
        "sortOrder": "descending",
        "start": "0",
        "max_results": "50",
    }
    assert report.inserted == 54 and paper_count(sqlite_session) == 54
    assert report.sources[0].format == "arxiv"


def test_a_page_that_reaches_past_the_window_is_the_last(
    sqlite_session: Session, server: SourceServer
) -> None:
    """Page 1 is full and arXiv reports 386,601 results, but its oldest paper is older than
    the window (2026-07-10 16:00 on): page 2 is never asked for."""
    server.routes["/api/query"] = by_start({"0": API_PAGE_1})
    later = datetime(2026, 7, 13, 16, 0, tzinfo=UTC)

    report = run(sqlite_session, ["arxiv-api:cs.AI+cs.LG"], options(server, later))

    assert report.ok and report.inserted == 50
    assert [q["start"] for q in server.paths("/api/query")] == ["0"]


def test_arxiv_api_max_results_caps_the_pages_and_says_so(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/api/query"] = by_start({"0": API_PAGE_1})

    report = run(sqlite_session, ["arxiv-api:cs.AI"], options(server, arxiv_api_max_results=50))

    assert report.ok and [q["start"] for q in server.paths("/api/query")] == ["0"]
    assert any("ARXIV_API_MAX_RESULTS=50" in line for line in report.sources[0].details())


def test_the_polite_delay_separates_every_request_to_arxiv(
    sqlite_session: Session, server: SourceServer
) -> None:
    """Two API pages and a listing in one run: three requests to arXiv, each at least the
    delay after the one before, across sources; the daily-papers API is not arXiv's to pace."""
    delay = 1.0  # long enough that an unpaced request on a busy machine stays well under it
    server.routes["/api/query"] = by_start({"0": API_PAGE_1, "50": API_PAGE_2})
    server.routes["/rss/cs.AI"] = always(LISTING)
    server.routes["/api/daily_papers"] = by_date({"2026-07-13": DAILY_0713})
    opts = options(server, arxiv_api_delay_seconds=delay)

    report = run(sqlite_session, ["arxiv-api:cs.AI", "arxiv:cs.AI", "daily-papers"], opts)

    assert report.ok, report.summary()
    arxiv = [t for t, path, _ in server.requests if path in ("/api/query", "/rss/cs.AI")]
    assert len(arxiv) == 3
    gaps = [later - earlier for earlier, later in pairwise(arxiv)]
    assert min(gaps) >= delay, gaps
    daily = [t for t, path, _ in server.requests if path == "/api/daily_papers"]
    assert daily[1] - daily[0] < delay


def test_the_pacer_waits_only_for_what_is_left_of_the_delay() -> None:
    now = [100.0]
    slept: list[float] = []
    pacer = Pacer(3.0, clock=lambda: now[0], sleep=slept.append)

    pacer.wait("arxiv")  # the first request waits for nothing
    pacer.done("arxiv")
    now[0] += 1.0
    pacer.wait("arxiv")
    pacer.wait("daily-papers")

    assert slept == [2.0]


# --- the daily-papers API ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 7, 13, 0, 30, tzinfo=UTC),
        # The same moment in New York is still the 12th there; the days are UTC's.
        datetime(2026, 7, 12, 20, 30, tzinfo=timezone(timedelta(hours=-4))),
    ],
)
def test_daily_papers_reads_today_and_yesterday_in_utc(
    sqlite_session: Session, server: SourceServer, now: datetime
) -> None:
    server.routes["/api/daily_papers"] = by_date({"2026-07-13": DAILY_0713})

    report = run(sqlite_session, ["daily-papers"], options(server, now))

    assert [q["date"] for q in server.paths("/api/daily_papers")] == ["2026-07-13", "2026-07-12"]
    assert all(q["limit"] == "100" for q in server.paths("/api/daily_papers"))
    assert report.ok and report.inserted == 25 and report.sources[0].format == "daily-papers"


def test_a_named_day_is_read_alone(sqlite_session: Session, server: SourceServer) -> None:
    server.routes["/api/daily_papers"] = by_date({"2026-07-13": DAILY_0713})

    report = run(sqlite_session, ["daily-papers:2026-07-13"], options(server))

    assert report.inserted == 25
    assert [q["date"] for q in server.paths("/api/daily_papers")] == ["2026-07-13"]


def test_yesterdays_late_upvotes_refresh_the_stored_papers_without_new_rows(
    session: Session, server: SourceServer
) -> None:
    """Monday's run stores Monday's papers; Tuesday's reads Monday again (as yesterday), where
    every paper has gained upvotes, and updates them: nothing is stored twice."""
    late = json.loads(DAILY_0713)
    for entry in late:
        entry["paper"]["upvotes"] += 7
    server.routes["/api/daily_papers"] = by_date({"2026-07-13": DAILY_0713})
    monday = run(session, ["daily-papers"], options(server, MONDAY_NOON))
    before = {p.source_id: p.upvotes for p in stored(session).values()}
    server.routes["/api/daily_papers"] = by_date({"2026-07-13": json.dumps(late).encode()})

    tuesday = run(session, ["daily-papers"], options(server, MONDAY_NOON + timedelta(days=1)))

    assert monday.inserted == 25
    assert (tuesday.inserted, tuesday.updated, tuesday.unchanged) == (0, 25, 0)
    session.expire_all()
    after = {p.source_id: p.upvotes for p in stored(session).values()}
    assert after == {key: (votes or 0) + 7 for key, votes in before.items()}
    assert paper_count(session) == 25
    assert [q["date"] for q in server.paths("/api/daily_papers")][2:] == [
        "2026-07-14",
        "2026-07-13",
    ]


# --- RSS and Atom feeds -----------------------------------------------------------------------


def test_a_journals_rss_feed_becomes_text_papers_and_an_arxiv_item_joins_its_paper(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/journal.rss"] = always(JOURNAL_FEED)
    server.routes["/rss/cs.AI"] = always(LISTING)
    feed = f"rss:{server.url}/journal.rss"

    report = run(sqlite_session, [feed, "arxiv:cs.AI"], options(server))

    assert report.sources[0].line().startswith(f"{feed} (feed): 2 records, 2 inserted")
    assert [str(r) for r in report.sources[0].rejected] == [
        f"{feed} item 3: an item with an empty <title>"
    ]
    papers = stored(sqlite_session)
    journal = next(p for p in papers.values() if p.source == "feed")
    assert journal.title == "Calibrated Retrieval for Long-Context Question Answering"
    assert journal.abstract == (
        "Retrieval-augmented models answer long-context questions well when the retriever is "
        "calibrated & the reader knows when to abstain.\nWe show a simple recalibration that "
        "halves the error on three benchmarks."
    )
    assert journal.authors == ["Ana Souza", "Wei Chen", "Tomás Ruiz"]
    assert journal.url == "https://jmlr.example.org/tmlr/papers/v3/2026-0412.html"
    # The feed's arXiv item and the listing's paper are one row, with arXiv's text.
    assert report.sources[1].updated == 1 and len(papers) == 5
    assert papers["2607.09600"].abstract.startswith("Enhancing the reasoning capabilities")


def test_an_atom_feed_is_read_too(sqlite_session: Session, server: SourceServer) -> None:
    server.routes["/feed.atom"] = always(API_PAGE_1)

    report = run(sqlite_session, [f"atom:{server.url}/feed.atom"], options(server))

    assert report.ok and report.inserted == 50 and report.sources[0].format == "feed"
    assert "2607.09662" in stored(sqlite_session)


# --- failures ---------------------------------------------------------------------------------


def test_a_failing_source_fails_alone_with_one_line_naming_it(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/api/query"] = always(b"Service Unavailable", status=503)
    server.routes["/api/daily_papers"] = by_date({"2026-07-13": DAILY_0713})
    server.routes["/journal.rss"] = always(JOURNAL_FEED)
    server.routes["/rss/cs.AI"] = always(b"<html><body>Rate exceeded.</body></html>")
    sources = [
        "arxiv-api:cs.AI",
        "daily-papers",
        "arxiv:cs AI",
        "arxiv:cs.AI",
        f"rss:{server.url}/journal.rss",
        "rss:journal.rss",
    ]

    report = run(sqlite_session, sources, options(server))

    lines = [source.line() for source in report.sources]
    assert lines[0].startswith(
        f"FAILED arxiv-api:cs.AI: {server.url}/api/query?search_query=cat%3Acs.AI"
    )
    assert "the server answered HTTP 503" in lines[0]
    assert lines[1].startswith("daily-papers (daily-papers): 25 records, 25 inserted")
    assert lines[2] == (
        "FAILED arxiv:cs AI: name arXiv categories such as cs.CL or hep-th, joined by + "
        "(e.g. arxiv:cs.CL+cs.LG)."
    )
    assert lines[3].startswith("FAILED arxiv:cs.AI: the XML is neither an RSS 2.0 nor an Atom")
    assert lines[4].startswith(f"rss:{server.url}/journal.rss (feed): 2 records, 2 inserted")
    assert lines[5] == "FAILED rss:journal.rss: give the feed's http(s) URL after rss:."
    assert len(report.errors) == 4 and all("\n" not in e for e in report.errors)
    assert paper_count(sqlite_session) == 27


def test_a_failure_on_a_later_page_stores_nothing_of_that_source(
    sqlite_session: Session, server: SourceServer
) -> None:
    """Page 2 is not recorded (HTTP 500): the source fails whole, and the next run reads it
    again from page 1 rather than leaving a window with a hole in it."""
    server.routes["/api/query"] = by_start({"0": API_PAGE_1})
    early = datetime(2026, 7, 13, 0, 0, tzinfo=UTC)

    report = run(sqlite_session, ["arxiv-api:cs.AI"], options(server, early))

    assert report.errors[0].startswith("arxiv-api:cs.AI: ")
    assert "start=50" in report.errors[0] and "HTTP 500" in report.errors[0]
    assert paper_count(sqlite_session) == 0


def test_connectors_fetch_only_public_addresses_unless_allowed(
    sqlite_session: Session, server: SourceServer
) -> None:
    server.routes["/api/daily_papers"] = by_date({"2026-07-13": DAILY_0713})

    report = ingest(sqlite_session, ["daily-papers"], timeout=5, connectors=options(server))

    assert "refused: 127.0.0.1 is a loopback address" in report.errors[0]
    assert "INGEST_ALLOW_PRIVATE_NETWORKS=true" in report.errors[0]
    assert server.requests == []


# --- configuration: INGEST_SOURCES, the task, the command, the settings -----------------------


def test_ingest_sources_are_names_urls_and_paths_split_at_spaces_and_commas() -> None:
    configured = (
        "arxiv:cs.CL,arxiv:cs.LG, daily-papers,rss:https://example.org/feed?a=1,2 "
        "https://export.arxiv.org/api/query?id_list=2607.09600,2607.09649 papers.json"
    )

    assert source_list(configured) == [
        "arxiv:cs.CL",
        "arxiv:cs.LG",
        "daily-papers",
        "rss:https://example.org/feed?a=1,2",
        "https://export.arxiv.org/api/query?id_list=2607.09600,2607.09649",
        "papers.json",
    ]
    assert source_list("  ") == []


def connector_settings(settings: Settings, server: SourceServer, **changes: object) -> Settings:
    return replace(
        settings,
        ingest_allow_private_networks=True,
        arxiv_listing_url=f"{server.url}/rss/{{category}}",
        arxiv_api_url=f"{server.url}/api/query",
        daily_papers_url=f"{server.url}/api/daily_papers",
        arxiv_api_delay_seconds=0.01,
        **changes,  # type: ignore[arg-type]
    )


def test_the_scheduled_task_reads_names_and_fixed_files_alike(
    sqlite_settings: Settings, server: SourceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import tasks

    server.routes["/rss/cs.AI"] = always(LISTING)
    server.routes["/api/daily_papers"] = always(DAILY_0713)
    fixed = DATA / "daily_papers_one_bad.json"
    configured = connector_settings(
        sqlite_settings, server, ingest_sources=f"arxiv:cs.AI,daily-papers {fixed}"
    )
    monkeypatch.setattr(tasks, "_settings", lambda: configured)

    result = tasks.ingest_sources.run()

    assert result["errors"] == []
    assert result["inserted"] == 4 + 25 + 3 and result["rejected"] == 1


def test_digest_ingest_source_reads_one_source_by_name(
    sqlite_settings: Settings, server: SourceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sqlite_settings.data_dir.parent)  # no stray .env
    server.routes["/api/daily_papers"] = always(DAILY_0713)
    env = {
        "DATA_DIR": str(sqlite_settings.data_dir),
        "DATABASE_URL": sqlite_settings.database_url,
        "SECRET_KEY": "cli-test-secret",
        "INGEST_ALLOW_PRIVATE_NETWORKS": "true",
        "DAILY_PAPERS_URL": f"{server.url}/api/daily_papers",
    }

    result = CliRunner().invoke(
        main, ["ingest", "--source", "daily-papers"], env=env, catch_exceptions=False
    )

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith(
        "daily-papers (daily-papers): 25 records, 25 inserted"
    )
    assert len(server.paths("/api/daily_papers")) == 2


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ARXIV_LISTING_URL", "https://rss.arxiv.org/rss/", "must contain {category}"),
        ("ARXIV_API_DELAY_SECONDS", "-1", "ARXIV_API_DELAY_SECONDS must be 0 or more"),
        ("ARXIV_API_PAGE_SIZE", "5000", "must be from 1 to 2000"),
    ],
)
def test_connector_settings_that_cannot_work_are_refused(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Settings.from_env({variable: value}, env_file=None)
