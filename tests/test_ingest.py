"""Ingest against real inputs (shared/seeds, shared/real-inputs), samples and real databases.

Samples in tests/data/ingest/ were written from the documented formats: `*_one_bad.*` hold good
records around one broken one; the rest are whole documents that must be refused.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from digest.ingest import (
    IngestError,
    PaperRecord,
    detect_format,
    ingest,
    load_sample_papers,
    parse,
    read_source,
    title_key,
    upsert_papers,
)
from digest.models import Paper

DATA = Path(__file__).parent / "data" / "ingest"

REAL_INPUTS = {
    "arxiv_old-format_2016_au-del_maestro_10entries.xml": ("arxiv", 10),
    "arxiv_new-format_2026-07_cs.AI-OR-cs.LG_50entries.xml": ("arxiv", 50),
    "arxiv_new-format_2026-04_all-testing_100entries.xml": ("arxiv", 100),
    "arxiv_new-format_2025-11_electron-AND-proton_10entries_bare-links.xml": ("arxiv", 10),
    "hf_daily_papers_2026-06-12_30entries.json": ("daily-papers", 30),
    "hf_daily_papers_2026-07-13_25entries.json": ("daily-papers", 25),
    "hf_daily_papers_2026-07-31_30entries.json": ("daily-papers", 30),
}


def seed_pages(shared_dir: Path) -> list[str]:
    return [str(p) for p in sorted((shared_dir / "seeds").glob("*.txt"))]


def real_input(shared_dir: Path, name: str) -> list[PaperRecord]:
    result = parse((shared_dir / "real-inputs" / name).read_bytes(), origin=name)
    assert result.rejected == []
    return result.records


def paper_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Paper)) or 0


def paper(session: Session, source_id: str) -> Paper:
    return session.scalars(select(Paper).where(Paper.source_id == source_id)).one()


# --- the seed pages -----------------------------------------------------------------------


def test_seed_pages_give_445_papers_once(session: Session, shared_dir: Path) -> None:
    report = ingest(session, seed_pages(shared_dir))

    assert report.ok and report.rejected == []
    assert [s.format for s in report.sources] == ["page", "page", "page"]
    assert report.records == 451
    assert report.inserted == 445 and paper_count(session) == 445
    titles = session.scalars(select(Paper.title)).all()
    assert not [t for t in titles if t.startswith("Subscribe")]
    assert "A Neural ODE Interpretation of Transformer Layers" in titles
    assert "RMT: Retentive Networks Meet Vision Transformers" in titles

    again = ingest(session, seed_pages(shared_dir))

    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 451)
    assert paper_count(session) == 445


def test_seed_page_entries_are_complete(sqlite_settings: object, shared_dir: Path) -> None:
    records = parse(Path(seed_pages(shared_dir)[1]).read_bytes()).records  # the blank-line page

    first = records[0]
    assert first.title == "Activation Space Selectable Kolmogorov-Arnold Networks"
    assert first.abstract.startswith("The multilayer perceptron (MLP), a fundamental paradigm")
    assert first.source_id == f"page:{title_key(first.title)}"
    assert first.url == (
        "https://arxiv.org/search/?query=Activation+Space+Selectable+Kolmogorov-Arnold+Networks"
        "&searchtype=title"
    )
    assert (first.pdf_url, first.published_at, first.authors) == (None, None, ())


def test_whole_input_is_looked_up_in_a_constant_number_of_queries(
    session: Session, shared_dir: Path
) -> None:
    records = [r for page in seed_pages(shared_dir) for r in parse(Path(page).read_bytes()).records]
    upsert_papers(session, records)
    session.commit()
    selects: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        counts = upsert_papers(session, records)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert (counts.inserted, counts.updated) == (0, 0)
    assert len(selects) == 2  # by source id, by title: 451 records fit one chunk each


# --- real API responses ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL_INPUTS))
def test_real_inputs_parse_without_rejections(shared_dir: Path, name: str) -> None:
    fmt, count = REAL_INPUTS[name]
    data = (shared_dir / "real-inputs" / name).read_bytes()

    result = parse(data, origin=name)

    assert detect_format(data) == fmt == result.format
    assert (len(result.records), result.rejected) == (count, [])
    for record in result.records:
        assert record.title and "\n" not in record.title and "  " not in record.title
        assert record.published_at is not None and record.published_at.tzinfo is not None
        assert record.url and record.url.startswith("https://")
        assert record.pdf_url and record.pdf_url.startswith("https://arxiv.org/pdf/")
        assert "v" not in record.source_id.split("/")[-1]  # no version in the id


def test_all_real_inputs_ingest(session: Session, shared_dir: Path) -> None:
    paths = [str(shared_dir / "real-inputs" / name) for name in sorted(REAL_INPUTS)]

    report = ingest(session, paths)

    assert report.ok and report.rejected == []
    assert report.records == 255
    # 2607.09657 and 2607.09424 are in both the cs.AI feed and the 2026-07-13 daily papers.
    assert report.inserted == 253 and paper_count(session) == 253
    again = ingest(session, paths)
    assert (again.inserted, again.updated) == (0, 0)


def test_bare_links_are_classified_by_path(shared_dir: Path) -> None:
    name = "arxiv_new-format_2025-11_electron-AND-proton_10entries_bare-links.xml"
    records = {r.source_id: r for r in real_input(shared_dir, name)}

    first = records["nucl-ex/0408020"]
    assert first.url == "https://arxiv.org/abs/nucl-ex/0408020v1"
    assert first.pdf_url == "https://arxiv.org/pdf/nucl-ex/0408020v1"
    assert all("/abs/" in r.url and "/pdf/" in r.pdf_url for r in records.values())  # type: ignore[operator]
    assert "Ulf-G. Meißner" in records["1205.6628"].authors


def test_old_format_titles_and_abstracts_are_unwrapped(shared_dir: Path) -> None:
    records = {
        r.source_id: r
        for r in real_input(shared_dir, "arxiv_old-format_2016_au-del_maestro_10entries.xml")
    }

    titles = {r.title for r in records.values()}
    assert (
        "From stripe to checkerboard order on the square lattice in the presence of quenched "
        "disorder" in titles
    )
    melting = records["cond-mat/0412498"]  # an old-style id
    assert melting.url == "https://arxiv.org/abs/cond-mat/0412498v1"  # http:// upgraded
    assert melting.abstract.startswith("We present the theory of the effect of thermal")
    assert "\n" not in melting.abstract
    assert melting.authors == ("Adrian Del Maestro", "Subir Sachdev")
    assert melting.published_at == datetime(2004, 12, 19, 16, 18, 24, tzinfo=UTC)


def test_new_format_keeps_unicode_and_paragraphs(shared_dir: Path) -> None:
    recent = {
        r.source_id: r
        for r in real_input(shared_dir, "arxiv_new-format_2026-07_cs.AI-OR-cs.LG_50entries.xml")
    }
    testing = {
        r.source_id: r
        for r in real_input(shared_dir, "arxiv_new-format_2026-04_all-testing_100entries.xml")
    }

    assert "Cláudio Lúcio do Val Lopes" in recent["2607.09641"].authors
    assert "Aurora Ramírez" in testing["2405.13786"].authors
    omega_test = "$ω$Test: WebView-Oriented Testing for Android Applications"
    assert testing["2306.03845"].title == omega_test
    assert "cs/0503050" in testing  # old-style id in a new-format feed
    multi = [r.abstract for r in testing.values() if "\n" in r.abstract]
    assert multi and all("\n " not in a and "  " not in a for a in multi)


def test_daily_papers_engagement_and_names(shared_dir: Path) -> None:
    name = "hf_daily_papers_2026-07-31_30entries.json"
    july = {r.source_id: r for r in real_input(shared_dir, name)}

    chem = july["2607.28618"]
    assert chem.title == "AskChem: Claim-Centered Infrastructure for Chemistry Literature Synthesis"
    assert (chem.upvotes, chem.comments, chem.stars) == (292, 2, 8)
    assert chem.url == "https://huggingface.co/papers/2607.28618"
    assert chem.pdf_url == "https://arxiv.org/pdf/2607.28618"
    assert chem.published_at == datetime(2026, 7, 30, tzinfo=UTC)
    assert july["2607.28582"].title.startswith("β-OPSD:")
    assert "Eugenio Martínez Cámara" in july["2607.28319"].authors
    assert any(r.stars is None for r in july.values())  # githubStars is optional


# --- written samples: one bad record among good ones ----------------------------------------


def test_daily_papers_sample_rejects_the_entry_without_id(session: Session) -> None:
    report = ingest(session, [str(DATA / "daily_papers_one_bad.json")])

    assert [str(r) for r in report.rejected] == [
        "daily_papers_one_bad.json entry 3: missing paper.id"
    ]
    assert report.inserted == 3
    memory = paper(session, "2412.09764")
    assert memory.title == "Memory Layers at Scale"  # the wrapped title is one line
    assert memory.authors[1] == "Barlas Oğuz"
    assert (memory.upvotes, memory.comments, memory.stars) == (35, 3, 250)
    assert "Meire Fortunato" in paper(session, "1506.03134").authors  # hidden, still named


def test_arxiv_sample_rejects_the_entry_without_id(session: Session) -> None:
    report = ingest(session, [str(DATA / "arxiv_one_bad.xml")])

    assert [str(r) for r in report.rejected] == ["arxiv_one_bad.xml entry 2: missing <id>"]
    assert report.inserted == 3
    hopfield = paper(session, "2008.02217")
    assert hopfield.title == "Hopfield Networks is All You Need"
    assert hopfield.authors == ["Hubert Ramsauer", "Bernhard Schäfl", "Sepp Hochreiter"]
    assert hopfield.url == "https://arxiv.org/abs/2008.02217v3"
    assert hopfield.published_at == datetime(2020, 7, 16, 17, 52, 37, tzinfo=UTC)
    assert paper(session, "1609.09106").pdf_url == "https://arxiv.org/pdf/1609.09106v4"


def test_page_with_missing_abstracts_keeps_the_complete_entries() -> None:
    result = parse((DATA / "page_malformed.txt").read_bytes(), origin="page_malformed.txt")

    assert [r.title for r in result.records] == ["Pointer Networks", "HyperNetworks"]
    assert [str(r) for r in result.rejected] == [
        "page_malformed.txt line 5: title 'A Title Whose Abstract Went Missing' has no abstract "
        "after it",
        "page_malformed.txt line 8: title 'A Trailing Title With No Abstract' has no abstract "
        "after it",
    ]


def _entry(**paper: object) -> dict[str, object]:
    base: dict[str, object] = {"id": "2607.00001", "title": "A title", "summary": "An abstract."}
    return {"paper": {**base, **paper}, "numComments": 1}


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (_entry(id=None), "missing paper.id"),
        (_entry(id="not-an-id"), "paper.id 'not-an-id' is not an arXiv id"),
        (_entry(title=["A", "list"]), "paper.title is not a string but a list"),
        (_entry(title="  "), "paper 2607.00001 has an empty title"),
        (_entry(publishedAt="last Tuesday"), "publishedAt 'last Tuesday' is not an ISO 8601 date"),
        (_entry(upvotes="lots"), "paper.upvotes is not a count: 'lots'"),
        ("just a string", "not an object but a string"),
    ],
)
def test_bad_daily_papers_records_are_rejected_with_a_reason(entry: object, reason: str) -> None:
    good = _entry(id="2607.00002", title="The good one")
    data = json.dumps([good, entry]).encode()

    result = parse(data, origin="api")

    assert [r.source_id for r in result.records] == ["2607.00002"]
    assert [str(r) for r in result.rejected] == [f"api entry 2: {reason}"]


ATOM_ENTRY = "<entry><id>{id}</id>{title}<summary>S.</summary>{published}</entry>"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (dict(id="", title="<title>T</title>"), "missing <id>"),
        (
            dict(id="http://example.org/x", title="<title>T</title>"),
            "<id> 'http://example.org/x' is not an arXiv abstract URL",
        ),
        (
            dict(id="http://arxiv.org/abs/2607.00001v1", title=""),
            "paper 2607.00001 is missing <title>",
        ),
        (
            dict(
                id="http://arxiv.org/abs/2607.00001v1",
                title="<title>T</title>",
                published="<published>soon</published>",
            ),
            "<published> 'soon' is not an ISO 8601 date",
        ),
    ],
)
def test_bad_arxiv_records_are_rejected_with_a_reason(entry: dict[str, str], reason: str) -> None:
    good = ATOM_ENTRY.format(
        id="http://arxiv.org/abs/2607.00002v1", title="<title>Good</title>", published=""
    )
    bad = ATOM_ENTRY.format(**{"published": "", **entry})
    feed = f'<feed xmlns="http://www.w3.org/2005/Atom">{bad}{good}</feed>'

    result = parse(feed.encode(), origin="feed")

    assert [r.source_id for r in result.records] == ["2607.00002"]
    assert [str(r) for r in result.rejected] == [f"feed entry 1: {reason}"]


def test_hostile_text_is_stored_as_text_without_control_characters(session: Session) -> None:
    entry = _entry(
        title="<script>alert(1)</script>\r\nBcc: victim@example.org",
        summary="Line one\r\n  <b>bold</b> \x07bell\x00 and\ttab",
        authors=[{"name": "Robert'); DROP TABLE papers;--\x1b[31m", "hidden": False}],
    )
    result = parse(json.dumps([entry]).encode())
    upsert_papers(session, result.records)
    session.commit()

    stored = paper(session, "2607.00001")
    assert stored.title == "<script>alert(1)</script> Bcc: victim@example.org"
    assert stored.abstract == "Line one\n<b>bold</b> bell and tab"
    assert stored.authors == ["Robert'); DROP TABLE papers;--[31m"]


# --- whole documents that must be refused ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("arxiv_truncated.xml", "invalid XML (no element found"),
        ("billion_laughs.xml", "the XML has a <!DOCTYPE> or entity declarations"),
        ("xxe.xml", "the XML has a <!DOCTYPE> or entity declarations"),
        ("invalid.json", "invalid JSON at line 1 column 64"),
        ("wrong_shape.json", "expected a JSON list of daily-papers entries, got an object"),
        ("empty.txt", "the input is empty"),
        ("binary", "the input is binary"),
        ("latin1", "the input is not UTF-8 text"),
        ("html", "the XML is not an Atom feed (its root is <html>)"),
        ("ints.json", 'none of the 3 JSON entries has a "paper" object'),
    ],
)
def test_malformed_documents_are_refused_whole(
    session: Session, tmp_path: Path, name: str, message: str
) -> None:
    written = {
        "binary": bytes(range(256)) * 4,
        "latin1": "Théorie des graphes\nUne étude des graphes aléatoires.\n".encode("latin-1"),
        "html": b"<!-- a login page --><html><body>Sign in</body></html>",
        "ints.json": b"[1, 2, 3]",
    }
    path = DATA / name
    if name in written:
        path = tmp_path / name
        path.write_bytes(written[name])

    with pytest.raises(IngestError, match="^" + re.escape(message)):
        parse(path.read_bytes())
    report = ingest(session, [str(path), str(DATA / "arxiv_one_bad.xml")])

    assert str(report.sources[0].error).startswith(f"{path}: {message}")
    assert (report.sources[0].inserted, report.sources[0].records) == (0, 0)
    assert report.sources[1].inserted == 3 and paper_count(session) == 3
    assert not report.ok and "FAILED" in report.summary()


def test_entity_expansion_is_never_performed() -> None:
    with pytest.raises(IngestError) as caught:
        parse((DATA / "billion_laughs.xml").read_bytes())
    assert "lol" not in str(caught.value)
    with pytest.raises(IngestError) as caught:
        parse((DATA / "xxe.xml").read_bytes(), fmt="arxiv")
    assert "root:" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"\xef\xbb\xbf  \n<?xml version='1.0'?><feed/>", "arxiv"),
        (b"\n\n[]", "daily-papers"),
        (b'{"a": 1}', "daily-papers"),
        (b"\xef\xbb\xbfnew\n\nGet trending papers in your email inbox!", "page"),
    ],
)
def test_format_is_detected_from_content(data: bytes, fmt: str) -> None:
    assert detect_format(data) == fmt


def test_an_unknown_format_name_is_refused() -> None:
    with pytest.raises(IngestError, match="unknown format 'rss'"):
        parse(b"x", fmt="rss")


# --- one paper, one row ---------------------------------------------------------------------


def test_arxiv_entry_takes_over_the_page_entry_of_the_same_paper(
    session: Session, shared_dir: Path
) -> None:
    ingest(session, seed_pages(shared_dir)[:1])
    placeholder = paper(session, f"page:{title_key('Hopfield Networks is All You Need')}")
    first_seen = placeholder.first_seen_at

    report = ingest(session, [str(DATA / "arxiv_one_bad.xml")])

    assert (report.inserted, report.updated) == (1, 2)  # Pointer Networks is not on page 000
    assert paper_count(session) == 239 + 1
    hopfield = paper(session, "2008.02217")
    assert hopfield.id == placeholder.id and hopfield.first_seen_at == first_seen
    assert (hopfield.source, hopfield.url) == ("arxiv", "https://arxiv.org/abs/2008.02217v3")
    assert hopfield.published_at == datetime(2020, 7, 16, 17, 52, 37, tzinfo=UTC)
    assert hopfield.authors[0] == "Hubert Ramsauer"


def test_page_entry_joins_the_known_arxiv_paper(session: Session, shared_dir: Path) -> None:
    ingest(session, [str(DATA / "arxiv_one_bad.xml")])

    report = ingest(session, seed_pages(shared_dir)[:1])

    assert report.inserted == 239 - 2  # Hopfield Networks and HyperNetworks are known
    assert paper_count(session) == 3 + 237
    key = title_key("HyperNetworks")
    rows = session.scalars(select(Paper).where(Paper.title_key == key)).all()
    assert [(r.source_id, r.source) for r in rows] == [("1609.09106", "arxiv")]


def test_daily_papers_entry_takes_over_the_page_entry(session: Session, shared_dir: Path) -> None:
    ingest(session, seed_pages(shared_dir)[:1])

    ingest(session, [str(DATA / "daily_papers_one_bad.json")])

    memory = paper(session, "2412.09764")
    assert (memory.source, memory.upvotes) == ("daily-papers", 35)
    assert memory.url == "https://huggingface.co/papers/2412.09764"
    key = title_key("Memory Layers at Scale")
    assert session.scalar(select(func.count()).where(Paper.title_key == key)) == 1


@pytest.mark.parametrize("arxiv_first", [True, False])
def test_arxiv_and_daily_papers_merge_in_either_order(
    session: Session, shared_dir: Path, arxiv_first: bool
) -> None:
    feed = str(shared_dir / "real-inputs" / "arxiv_new-format_2026-07_cs.AI-OR-cs.LG_50entries.xml")
    daily = str(shared_dir / "real-inputs" / "hf_daily_papers_2026-07-13_25entries.json")

    ingest(session, [feed, daily] if arxiv_first else [daily, feed])

    assert paper_count(session) == 50 + 25 - 2
    row = paper(session, "2607.09657")
    assert row.title == "Scalable Visual Pretraining for Language Intelligence"
    assert row.url == "https://arxiv.org/abs/2607.09657v1"  # arXiv's own metadata wins
    assert row.published_at == datetime(2026, 7, 10, 17, 57, 3, tzinfo=UTC)
    assert row.upvotes is not None and row.comments is not None  # engagement from daily papers


def test_engagement_change_counts_as_updated(session: Session) -> None:
    records = parse((DATA / "daily_papers_one_bad.json").read_bytes()).records
    day1 = datetime(2026, 7, 14, 8, tzinfo=UTC)
    day2 = day1 + timedelta(days=1)
    upsert_papers(session, records, now=day1)
    session.commit()

    newer = [replace(r, upvotes=99) if r.source_id == "2412.09764" else r for r in records]
    counts = upsert_papers(session, newer, now=day2)
    session.commit()

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 1, 2)
    memory = paper(session, "2412.09764")
    assert memory.upvotes == 99
    assert (memory.first_seen_at, memory.updated_at) == (day1, day2)
    assert paper(session, "1506.03134").updated_at == day1


def test_a_second_entry_for_a_paper_is_reported_and_the_first_kept(session: Session) -> None:
    data = json.dumps([_entry(upvotes=1), _entry(upvotes=5), _entry(id="2607.00001v2")]).encode()

    result = parse(data, origin="api")
    counts = upsert_papers(session, result.records)
    session.commit()

    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 0, 0)
    assert paper(session, "2607.00001").upvotes == 1
    assert [str(r) for r in result.rejected] == [
        "api entry 2: a second entry for paper 2607.00001, first at api entry 1; the first is kept",
        "api entry 3: a second entry for paper 2607.00001, first at api entry 1; the first is kept",
    ]


def test_records_from_several_sources_of_one_paper_still_merge(session: Session) -> None:
    first = parse(json.dumps([_entry(upvotes=1)]).encode()).records
    second = parse(json.dumps([_entry(upvotes=5)]).encode()).records

    counts = upsert_papers(session, [*first, *second])
    session.commit()

    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 0, 0)
    assert paper(session, "2607.00001").upvotes == 5


def test_title_key_ignores_case_spacing_and_punctuation() -> None:
    survey = title_key("Self-Supervised  Learning: A Survey")
    assert survey == title_key("self supervised learning a survey")
    assert title_key("ﬁne-tuning") == title_key("Fine Tuning")  # NFKC folds the ligature
    assert title_key("Pointer Networks") != title_key("HyperNetworks")
    assert len(title_key("x")) == 16


# --- URLs -------------------------------------------------------------------------------


class _SampleHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, directory=str(DATA), **kwargs)  # type: ignore[arg-type]

    def do_GET(self) -> None:
        if self.path == "/to-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/papers.json")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def sample_server() -> Iterator[str]:
    """A real HTTP server on loopback serving tests/data/ingest/."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SampleHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/papers.json"


def test_ingest_by_url(session: Session, sample_server: str) -> None:
    url = f"{sample_server}/arxiv_one_bad.xml"

    report = ingest(session, [url], timeout=5, allow_private_networks=True)

    assert report.ok and report.inserted == 3
    assert [str(r) for r in report.rejected] == [f"{url} entry 2: missing <id>"]


def test_url_errors_are_clear(sample_server: str, silent_server: str) -> None:
    loopback = {"allow_private_networks": True}
    with pytest.raises(IngestError, match=r"answered HTTP 404 .*check the URL"):
        read_source(f"{sample_server}/missing.json", timeout=5, **loopback)
    with pytest.raises(IngestError, match=r"no answer within 0.3 s"):
        read_source(silent_server, timeout=0.3, **loopback)
    with pytest.raises(IngestError, match=r"larger than 100 bytes"):
        read_source(f"{sample_server}/arxiv_one_bad.xml", timeout=5, max_bytes=100, **loopback)
    with pytest.raises(IngestError, match=r"redirected to ftp://127.0.0.1/papers.json"):
        read_source(f"{sample_server}/to-ftp", timeout=5, **loopback)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/papers.json"])
def test_only_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(IngestError, match="only http:// and https:// URLs"):
        read_source(url, timeout=1)


def test_a_broken_source_does_not_stop_the_others(session: Session, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.json")

    report = ingest(session, [missing, str(DATA / "daily_papers_one_bad.json")])

    assert report.errors == [
        f"{missing}: no such file; check the path (a URL must start with http:// or https://)."
    ]
    assert report.inserted == 3
    summary = report.summary()
    assert "daily_papers_one_bad.json (daily-papers): 3 records, 3 inserted" in summary
    assert "rejected daily_papers_one_bad.json entry 3: missing paper.id" in summary
    assert summary.endswith("3 inserted, 0 updated, 0 unchanged, 1 rejected, 1 failed sources")


# --- the demo corpus --------------------------------------------------------------------


def test_sample_papers_load_once(session: Session, shared_dir: Path) -> None:
    report = load_sample_papers(session)

    assert report.ok and report.rejected == []
    assert report.inserted == 150 and paper_count(session) == 150
    seed_titles = {
        r.title for page in seed_pages(shared_dir) for r in parse(Path(page).read_bytes()).records
    }
    assert set(session.scalars(select(Paper.title))) <= seed_titles

    again = load_sample_papers(session)

    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 150)
