"""The `digest` command through click's test runner: help, the demo, admin commands, bad input."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from digest.cli import main


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
