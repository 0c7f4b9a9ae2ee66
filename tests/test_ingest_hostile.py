"""Ingest under hostile and broken inputs: one bad record or document fails alone, with a reason.

Records are validated into range before they reach the database (both backends), overlong
fields are cut and the cut reported, duplicates are reported, invisible characters that
reorder or hide text are stripped, and only files with a known format's structure are read.
"""

from __future__ import annotations

import json
import random
import sys
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import digest.ingest.formats as ingest_formats
import digest.ingest.records as ingest_records
from digest.cli import main
from digest.ingest import (
    SAMPLE_PAPERS,
    IngestError,
    detect_format,
    ingest,
    parse,
    upsert_papers,
)
from digest.models import Paper
from digest.settings import Settings

DATA = Path(__file__).parent / "data" / "ingest"
GOOD_JSON = DATA / "daily_papers_one_bad.json"  # 3 papers and one entry without an id


def paper_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Paper)) or 0


def paper(session: Session, source_id: str) -> Paper:
    return session.scalars(select(Paper).where(Paper.source_id == source_id)).one()


def entry(n: int, **fields: object) -> dict[str, object]:
    """A daily-papers entry for paper 2607.0000<n>, with `fields` set on its paper."""
    paper: dict[str, object] = {
        "id": f"2607.{n:05d}", "title": f"Paper number {n}", "summary": "An abstract.",
        "authors": [{"name": "Ada Lovelace"}], "publishedAt": "2026-07-30T00:00:00.000Z",
        "upvotes": 3,
    }
    return {"paper": {**paper, **fields}, "numComments": 1}


def write_json(path: Path, entries: list[object]) -> str:
    path.write_text(json.dumps(entries))
    return str(path)


def atom(*entries: str) -> bytes:
    return f'<feed xmlns="http://www.w3.org/2005/Atom">{"".join(entries)}</feed>'.encode()


def atom_entry(n: int, extra: str = "", title: str = "A title") -> str:
    return (
        f"<entry><id>http://arxiv.org/abs/2607.{n:05d}v1</id><title>{title}</title>"
        f"<summary>S.</summary><author><name>Ada</name></author>{extra}</entry>"
    )


# --- 1. one bad record, one bad document --------------------------------------------------


def test_records_out_of_range_are_rejected_and_the_rest_stored(
    session: Session, tmp_path: Path
) -> None:
    a = write_json(tmp_path / "a.json", [
        entry(1),
        entry(2, publishedAt="0001-01-01T00:00:00+01:00"),
        entry(3, upvotes=10**30),
        entry(4, upvotes=2**31),
        entry(5, githubStars=-1),
        entry(6, publishedAt="9999-12-31T23:59:59+00:00"),
        {"paper": {**entry(7)["paper"]}, "numComments": 2**31 - 1},  # the largest count
    ])

    report = ingest(session, [a, str(GOOD_JSON)])

    assert report.ok
    assert [str(r) for r in report.sources[0].rejected] == [
        "a.json entry 2: publishedAt '0001-01-01T00:00:00+01:00' is out of range: a paper's "
        "date is from 1900 to today",
        "a.json entry 3: paper.upvotes is out of range (a 31-digit number): a count is a whole "
        "number from 0 to 2,147,483,647",
        "a.json entry 4: paper.upvotes is out of range (2147483648): a count is a whole number "
        "from 0 to 2,147,483,647",
        "a.json entry 5: paper.githubStars is out of range (-1): a count is a whole number from "
        "0 to 2,147,483,647",
        "a.json entry 6: publishedAt '9999-12-31T23:59:59+00:00' is out of range: a paper's "
        "date is from 1900 to today",
    ]
    assert report.sources[0].inserted == 2 and report.sources[1].inserted == 3
    assert paper(session, "2607.00007").comments == 2**31 - 1
    assert paper_count(session) == 5


def test_a_document_nested_200000_deep_fails_alone(session: Session, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    deep_xml = tmp_path / "deep.xml"
    deep_xml.write_bytes(
        b'<feed xmlns="http://www.w3.org/2005/Atom">' + b"<a>" * 200_000 + b"</a>" * 200_000
        + atom_entry(1).encode() + b"</feed>"
    )

    report = ingest(session, [str(deep), str(deep_xml), str(GOOD_JSON)])

    assert report.errors == [
        f"{deep}: the JSON is nested too deeply to read (a daily-papers response is four "
        "levels deep); check that this is the right file."
    ]
    assert [s.inserted for s in report.sources] == [0, 1, 3]


def test_an_integer_too_long_for_python_fails_only_its_record(tmp_path: Path) -> None:
    good = json.dumps(entry(1))
    data = f'[{{"paper": {{"id": "2607.00002", "title": "T", "upvotes": {"9" * 5000}}}}}, {good}]'

    result = parse(data.encode(), origin="api")

    assert [r.source_id for r in result.records] == ["2607.00001"]
    assert [str(r) for r in result.rejected] == [
        "api entry 1: paper.upvotes is out of range (inf): a count is a whole number from 0 to "
        "2,147,483,647"
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"title": None, "summary": None}, "paper 2607.00002 has an empty title"),
        ({"title": {"text": "T"}}, "paper.title is not a string but an object"),
        ({"summary": 42}, "paper.summary is not a string but a number"),
        ({"authors": "Ada Lovelace"}, "paper.authors is not a list but a string"),
        ({"id": 2607.00002}, "paper.id 2607.00002 is not an arXiv id"),
        ({"id": ["2607.00002"]}, "paper.id a list is not an arXiv id"),
        ({"id": "2607.00002" + "0" * 100}, "is not an arXiv id"),
        ({"id": "cond-mat" + "a" * 200 + "/0412498"}, "is not an arXiv id"),
        ({"publishedAt": 20260730}, "publishedAt is not a date string: 20260730"),
        ({"publishedAt": ["2026-07-30"]}, "publishedAt is not a date string: a list"),
        ({"publishedAt": "2026-13-45"}, "publishedAt '2026-13-45' is not an ISO 8601 date"),
        ({"publishedAt": "x" * 10_000}, "publishedAt 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ({"upvotes": "lots"}, "paper.upvotes is not a count: 'lots'"),
        ({"upvotes": [1]}, "paper.upvotes is not a count: a list"),
        ({"upvotes": True}, "paper.upvotes is not a count: true"),
        ({"upvotes": 1.5}, "paper.upvotes is out of range (1.5)"),
        ({"upvotes": 1e999}, "paper.upvotes is out of range (inf)"),
        ({"upvotes": float("nan")}, "paper.upvotes is out of range (nan)"),
    ],
)
def test_wrong_types_nulls_and_odd_numbers_are_rejected_with_a_reason(
    fields: dict[str, object], reason: str
) -> None:
    data = json.dumps([entry(1), entry(2, **fields)]).encode()

    result = parse(data, origin="api")

    assert [r.source_id for r in result.records] == ["2607.00001"]
    assert len(result.rejected) == 1 and reason in str(result.rejected[0])
    assert len(str(result.rejected[0])) < 200


def test_numbers_given_as_strings_or_whole_floats_are_read_as_counts() -> None:
    data = json.dumps([entry(1, upvotes="12", githubStars=40.0), entry(2, upvotes=None)])

    records = parse(data.encode()).records

    assert [(r.upvotes, r.stars) for r in records] == [(12, 40), (None, None)]


def test_a_value_nested_almost_to_the_limit_is_not_echoed() -> None:
    deep_id = "[" * 900 + "]" * 900
    data = f'[{json.dumps(entry(1))}, {{"paper": {{"id": {deep_id}, "title": "T"}}}}]'

    result = parse(data.encode(), origin="api")

    assert [str(r) for r in result.rejected] == ["api entry 2: paper.id a list is not an arXiv id"]


@pytest.mark.parametrize(
    ("feed", "reason"),
    [
        (atom_entry(2, "<published>0001-01-01T00:00:00+01:00</published>"),
         "<published> '0001-01-01T00:00:00+01:00' is out of range"),
        ("<entry><id>http://[::1/abs/2607.00002</id><title>T</title></entry>",
         "<id> 'http://[::1/abs/2607.00002' is not an arXiv abstract URL"),
        ("<entry><id>http://arxiv.org/abs/" + "9" * 500 + "</id><title>T</title></entry>",
         "is not an arXiv abstract URL"),
        ("<entry><id>http://arxiv.org/abs/2607.00002</id><title><b/></title></entry>",
         "paper 2607.00002 has an empty <title>"),
    ],
)
def test_bad_arxiv_entries_are_rejected_with_a_reason(feed: str, reason: str) -> None:
    result = parse(atom(atom_entry(1), feed), origin="feed")

    assert [r.source_id for r in result.records] == ["2607.00001"]
    assert len(result.rejected) == 1 and reason in str(result.rejected[0])


@pytest.mark.parametrize(
    "data",
    [
        atom(atom_entry(1))[:-20],
        b'<feed xmlns="http://www.w3.org/2005/Atom"><entry>',
        b"<?xml version='1.0'?>",
        b"<feed xmlns='http://www.w3.org/2005/Atom'>&undefined;</feed>",
        b"<feed xmlns='http://www.w3.org/2005/Atom'><entry></feed>",
        b"[{\"paper\": {\"id\": \"2607.00001\", \"title\": \"T\"",
        b"[1, 2, {\"paper\": 3}",
        b"{\"paper\": {\"id\": \"2607.00001\"}}",
        b'"a string"',
        b"null",
        b"\xef\xbb\xbf",
        b"\x1b\x1b\x1b",
    ],
)
def test_truncated_and_odd_documents_are_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(IngestError) as refused:
        parse(data, origin="doc")
    assert "\n" not in str(refused.value)


def _mutations(rng: random.Random, documents: list[bytes]) -> list[bytes]:
    """Broken variants of real documents: cut short, bytes changed, fields given odd values."""
    odd: list[object] = [None, [], {}, "", 0, -1, 1.5, 10**30, "9" * 40, True, "\u202e",
                         [[[]]], {"name": None}, "x" * 3000, float("inf"), "0001-01-01T00:00"]
    variants: list[bytes] = []
    for _ in range(400):
        doc = rng.choice(documents)
        how = rng.randrange(4)
        if how == 0:
            variants.append(doc[: rng.randrange(len(doc))])
        elif how == 1:
            changed = bytearray(doc)
            for _ in range(rng.randint(1, 20)):
                changed[rng.randrange(len(changed))] = rng.randrange(256)
            variants.append(bytes(changed))
        elif how == 2 and doc.startswith(b"["):
            entries = json.loads(doc)
            for _ in range(rng.randint(1, 6)):
                target = rng.choice(entries)
                if isinstance(target.get("paper"), dict) and rng.random() < 0.8:
                    target = target["paper"]
                key = rng.choice([*target, "publishedAt", "upvotes", "authors", "id"])
                target[key] = json.loads(json.dumps(rng.choice(odd)))
            variants.append(json.dumps(entries).encode())
        else:
            at = rng.randrange(len(doc))
            insert = rng.choice([b"<", b"]", b"{", b'"', b"&amp;", b"<![CDATA[", b"\\u", b"\x00"])
            variants.append(doc[:at] + insert + doc[at:])
    return variants


def test_fuzzed_real_documents_fail_only_with_a_reason_and_what_parses_stores(
    session: Session, shared_dir: Path
) -> None:
    documents = [
        p.read_bytes() for p in sorted((shared_dir / "real-inputs").iterdir()) if p.is_file()
        and p.suffix in (".json", ".xml")
    ] + [p.read_bytes()[:20_000] for p in sorted((shared_dir / "seeds").glob("*.txt"))]
    parsed = []
    for data in _mutations(random.Random(20261206), documents):
        try:
            parsed.append(parse(data, origin="fuzz"))
        except IngestError as exc:
            assert "\n" not in str(exc)
    records = [r for result in parsed for r in result.records]

    upsert_papers(session, records)
    session.commit()

    assert len(parsed) > 100 and paper_count(session) > 100


def test_an_unforeseen_parser_failure_fails_its_source_alone(
    session: Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = ingest_formats.READERS["arxiv"]

    def broken(text: str, origin: str) -> list[ingest_records.Entry]:
        raise KeyError("something no one foresaw")

    monkeypatch.setitem(ingest_formats.READERS, "arxiv", broken)
    feed = tmp_path / "feed.xml"
    feed.write_bytes(atom(atom_entry(1)))

    report = ingest(session, [str(feed), str(GOOD_JSON)])

    assert report.errors == [
        f"{feed}: could not be ingested (KeyError: 'something no one foresaw'); this is a bug "
        "in paper-digest: please report it with the source."
    ]
    assert report.sources[1].inserted == 3
    monkeypatch.setitem(ingest_formats.READERS, "arxiv", real)


# --- 3. field sizes -----------------------------------------------------------------------------


def test_overlong_fields_are_cut_stored_and_reported(session: Session, tmp_path: Path) -> None:
    huge_title = "Attention " * 524_288  # 5 MB
    authors = [{"name": f"Author {i}"} for i in range(5000)] + [{"name": "N" * 1000}]
    path = write_json(tmp_path / "big.json", [
        entry(1, title=huge_title, summary="word " * 100_000, authors=authors),
        entry(2),
    ])

    report = ingest(session, [path])

    big = paper(session, "2607.00001")
    assert len(big.title) == ingest_records.MAX_TITLE_CHARS and big.title.endswith("…")
    assert big.title.startswith("Attention Attention")
    assert len(big.abstract) == ingest_records.MAX_ABSTRACT_CHARS
    assert len(big.authors) == 100 and big.authors[:2] == ["Author 0", "Author 1"]
    assert [str(n) for n in report.sources[0].notes] == [
        "big.json entry 1: title cut from 5,242,879 to 500 characters",
        "big.json entry 1: abstract cut from 499,999 to 10,000 characters",
        "big.json entry 1: kept the first 100 of 5,001 authors",
    ]
    assert report.sources[0].inserted == 2 and report.rejected == []
    summary = report.summary()
    assert "big.json (daily-papers): 2 records, 2 inserted, 0 updated, 0 unchanged, 0 rejected, " \
           "3 changed" in summary
    assert "  changed big.json entry 1: title cut from 5,242,879 to 500 characters" in summary


def test_an_overlong_author_name_is_cut() -> None:
    data = json.dumps([entry(1, authors=[{"name": "N" * 1000}, {"name": "Ada"}])]).encode()

    result = parse(data, origin="api")

    assert [len(a) for a in result.records[0].authors] == [200, 3]
    assert [str(n) for n in result.notes] == ["api entry 1: 1 author name(s) cut to 200 characters"]


@pytest.mark.parametrize(
    "link",
    [
        '<link href="javascript:alert(1)" rel="alternate"/>',
        '<link href="data:text/html,hi" title="pdf"/>',
        f'<link href="https://arxiv.org/abs/2607.00001v1?{"a" * 5000}" rel="alternate"/>',
        '<link href="https://[::1/abs/x" rel="alternate"/>',
        '<link href="//arxiv.org/abs/2607.00001" rel="alternate"/>',
    ],
)
def test_a_link_that_is_not_a_sane_http_url_is_not_stored(link: str) -> None:
    record = parse(atom(atom_entry(1, link))).records[0]

    assert record.url == "https://arxiv.org/abs/2607.00001"
    assert record.pdf_url == "https://arxiv.org/pdf/2607.00001"


def test_every_stored_url_is_checked_whatever_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ingest_formats.READERS["daily-papers"]

    def with_bad_urls(text: str, origin: str) -> list[ingest_records.Entry]:
        found = real(text, origin)
        where, record = found[0]
        assert not isinstance(record, str)
        return [(where, replace(record, url="javascript:alert(1)", pdf_url="https://x/" * 300))]

    monkeypatch.setitem(ingest_formats.READERS, "daily-papers", with_bad_urls)

    result = parse(json.dumps([entry(1)]).encode(), origin="api")

    assert (result.records[0].url, result.records[0].pdf_url) == (None, None)
    assert [str(n) for n in result.notes] == [
        "api entry 1: url dropped: not an http(s) URL of at most 2,000 characters",
        "api entry 1: pdf_url dropped: not an http(s) URL of at most 2,000 characters",
    ]


# --- 4. duplicates ------------------------------------------------------------------------------


def test_duplicate_ids_in_one_file_are_reported_and_the_first_kept(
    session: Session, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "dup.json", [
        entry(1, title="The first"), entry(2), entry(1, title="The second"),
    ])
    feed = tmp_path / "dup.xml"
    feed.write_bytes(atom(atom_entry(7, title="Kept"), atom_entry(7, title="Dropped")))

    report = ingest(session, [path, str(feed)])

    assert [str(r) for r in report.rejected] == [
        "dup.json entry 3: a second entry for paper 2607.00001, first at dup.json entry 1; "
        "the first is kept",
        "dup.xml entry 2: a second entry for paper 2607.00007, first at dup.xml entry 1; "
        "the first is kept",
    ]
    assert paper(session, "2607.00001").title == "The first"
    assert paper(session, "2607.00007").title == "Kept"


def test_a_title_twice_on_a_page_is_reported() -> None:
    abstract = "We study things. " * 30
    page = f"Subscribe\nOne Paper\n{abstract}\nAnother\n{abstract}\nOne  paper\n{abstract}\n"

    result = parse(page.encode(), origin="page.txt")

    assert [r.title for r in result.records] == ["One Paper", "Another"]
    assert [str(r) for r in result.rejected] == [
        "page.txt line 6: a second entry for 'One paper', first at page.txt line 2; the first "
        "is kept"
    ]


# --- 5. invisible characters --------------------------------------------------------------------

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_bidi_and_other_invisible_characters_are_stripped_from_titles_and_authors(
    session: Session,
) -> None:
    title = f"Safe\u202e{BIDI}txt.exe Attention\u200b Is\u2060 All\ufeff You\u00ad Need\U000e0041"
    authors = [{"name": f"Ada\u2067 Lovelace{BIDI}"}, {"name": "\u202e\u202c"}]
    data = json.dumps([entry(1, title=title, authors=authors, summary="Ab\u202estract")])

    upsert_papers(session, parse(data.encode()).records)
    session.commit()

    stored = paper(session, "2607.00001")
    assert stored.title == "Safetxt.exe Attention Is All You Need"
    assert stored.authors == ["Ada Lovelace"]
    assert stored.abstract == "Abstract"


def test_every_control_format_and_surrogate_character_is_stripped() -> None:
    kept = {"\n", "\r", "\t", "\u200c", "\u200d"}  # ZWNJ, ZWJ: Persian and emoji need them
    invisible = [
        chr(cp) for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Cs") and chr(cp) not in kept
    ]
    text = "a" + "".join(invisible) + "b"

    assert ingest_records.clean_text(text) == "ab"
    assert ingest_records.one_line("x\u200cy\u200dz") == "x\u200cy\u200dz"


# --- files: only a known format with recognisable structure ------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("passwd", "not a papers page: it has neither the page's header nor a title line "
                   "followed by a one-line abstract; check that this is the right file."),
        ("README.md", "not a papers page: it "),  # the project's own README
        ("notes.md", "not a papers page: it lacks the page's header, and only 2 of its 10 lines"),
        ("script.py", "not a papers page: it has neither the page's header"),
    ],
)
def test_text_files_that_are_not_papers_pages_are_refused(
    session: Session, tmp_path: Path, name: str, message: str
) -> None:
    paragraph = "This project does a great many things for a great many people. " * 10
    written = {
        "passwd": "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/bin/sh\n",
        "README.md": (Path(__file__).parents[1] / "README.md").read_text(),
        "notes.md": f"# My project\n\n{paragraph}\n\n## Install\n\n```sh\npip install it\n```\n"
                    "\n## Use\n\nRun it.\n- one\n- two\n",
        "script.py": (Path(__file__).parents[1] / "digest" / "fetch.py").read_text(),
    }
    path = tmp_path / name
    path.write_text(written[name])

    report = ingest(session, [str(path), str(GOOD_JSON)])

    assert len(report.errors) == 1 and report.errors[0].startswith(f"{path}: {message}")
    assert report.sources[1].inserted == 3 and paper_count(session) == 3
    with pytest.raises(IngestError, match="not a papers page"):
        parse(path.read_bytes(), "page")  # --format page does not make it one


def test_etc_passwd_itself_is_refused(session: Session) -> None:
    report = ingest(session, ["/etc/passwd"])

    assert report.errors[0].startswith("/etc/passwd: not a papers page")
    assert paper_count(session) == 0


def test_a_page_with_its_header_keeps_good_entries_among_odd_lines() -> None:
    abstract = "We study things in a new way and find them better than before. " * 8
    page = f"Get trending papers in your email inbox!\nSubscribe\nA Paper\n{abstract}\n" \
           "stray line\nanother stray line\n"

    result = parse(page.encode(), origin="page.txt")

    assert [r.title for r in result.records] == ["A Paper"]
    assert len(result.rejected) == 2


def test_seed_pages_and_the_sample_still_parse_in_full(shared_dir: Path) -> None:
    pages = [*sorted((shared_dir / "seeds").glob("*.txt")), SAMPLE_PAPERS]

    results = [parse(p.read_bytes(), origin=p.name) for p in pages]

    assert [len(r.records) for r in results] == [239, 93, 119, 150]
    assert all(r.rejected == [] and r.notes == [] for r in results)
    assert {detect_format(p.read_bytes()) for p in pages} == {"page"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("example.org/papers.json", "no such file; check the path (a URL must start with "
                                    "http:// or https://)."),
        ("/dev/null", "not a regular file"),
        ("/", "is a directory"),
        ("a" * 5000, "cannot be read (File name too long)"),
    ],
)
def test_a_source_that_is_neither_url_nor_readable_file_says_so(
    session: Session, source: str, message: str
) -> None:
    report = ingest(session, [source, str(GOOD_JSON)])

    assert message in str(report.sources[0].error)
    assert len(str(report.sources[0].error)) <= 500
    assert report.sources[1].inserted == 3


# --- the report, the command and the task -------------------------------------------------------


def test_a_long_list_of_rejections_is_summarised(session: Session, tmp_path: Path) -> None:
    path = write_json(tmp_path / "many.json", [entry(1)] + [entry(i, id="bad") for i in range(50)])

    summary = ingest(session, [path]).summary()

    lines = summary.splitlines()
    assert sum(line.startswith("  rejected many.json entry") for line in lines) == 20
    assert "  ... and 30 more rejected" in lines


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": "", "SECRET_KEY": "hostile-test"}

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def test_the_ingest_command_reports_each_source_and_record_without_a_traceback(
    cli, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    write_json(tmp_path / "a.json", [
        entry(1), entry(2, publishedAt="0001-01-01T00:00:00+01:00"), entry(3, upvotes=10**30),
        entry(4, title="T" * 5_000_000),
    ])
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 200_000 + b"]" * 200_000)

    read_all = cli("ingest", "a.json", str(GOOD_JSON))
    one_failed = cli("ingest", str(deep), "/etc/passwd", "http://10.0.0.1/feed", str(GOOD_JSON))

    assert read_all.exit_code == 0, read_all.output
    assert read_all.output.splitlines() == [
        "a.json (daily-papers): 2 records, 2 inserted, 0 updated, 0 unchanged, 2 rejected, "
        "1 changed",
        "  rejected a.json entry 2: publishedAt '0001-01-01T00:00:00+01:00' is out of range: a "
        "paper's date is from 1900 to today",
        "  rejected a.json entry 3: paper.upvotes is out of range (a 31-digit number): a count "
        "is a whole number from 0 to 2,147,483,647",
        "  changed a.json entry 4: title cut from 5,000,000 to 500 characters",
        f"{GOOD_JSON} (daily-papers): 3 records, 3 inserted, 0 updated, 0 unchanged, "
        "1 rejected",
        "  rejected daily_papers_one_bad.json entry 3: missing paper.id",
        "total: 5 inserted, 0 updated, 0 unchanged, 1 changed, 3 rejected, 0 failed sources",
    ]
    assert one_failed.exit_code == 1
    lines = one_failed.output.splitlines()
    assert lines[0].startswith(f"FAILED {deep}: the JSON is nested too deeply")
    assert lines[1].startswith("FAILED /etc/passwd: not a papers page")
    assert lines[2].startswith("FAILED http://10.0.0.1/feed: refused: 10.0.0.1 is a private")
    assert lines[3].startswith(f"{GOOD_JSON} (daily-papers): 3 records, 0 inserted")
    assert lines[-1].endswith("3 failed sources")
    assert "Traceback" not in one_failed.output


def test_the_scheduled_ingest_task_reports_instead_of_raising(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from workers import tasks

    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    configured = replace(sqlite_settings, ingest_sources=f"{deep} http://10.0.0.1/ {GOOD_JSON}")
    monkeypatch.setattr(tasks, "_settings", lambda: configured)

    result = tasks.ingest_sources.run()

    assert result["inserted"] == 3 and result["rejected"] == 1
    errors = result["errors"]
    assert isinstance(errors, list) and len(errors) == 2
    assert "nested too deeply" in errors[0] and "refused" in errors[1]
