"""`digest health`: every check runs and reports, whatever the others find; --json for monitors;
plain-http links beside SMTP mail are a warning at start and in the report."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.cli import main
from digest.health import Level, run_checks
from digest.settings import Settings

from .smtp_server import SMTPServer


def by_name(settings: Settings) -> dict[str, Level]:
    return {check.name: check.level for check in run_checks(settings)}


def test_every_check_runs_even_when_the_database_is_down(tmp_path: Path) -> None:
    down = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/x",
                    redis_url="redis://127.0.0.1:6379/0", secret_key="k" * 40).resolved()
    levels = by_name(down)
    assert levels["database"] is Level.FAIL
    assert levels["redis"] is Level.OK and levels["templates"] is Level.OK
    assert list(levels) == ["database", "redis", "smtp", "secret key", "templates", "links"]


def test_a_shared_database_without_a_key_fails_the_secret_key_check(
    sqlite_settings: Settings,
) -> None:
    shared = replace(sqlite_settings, secret_key="",
                     database_url="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    [check] = [c for c in run_checks(shared) if c.name == "secret key"]
    assert check.level is Level.FAIL and "SECRET_KEY" in check.detail


def test_http_links_beside_smtp_mail_are_a_warning_in_health_and_at_start(
    sqlite_settings: Settings, smtp_server: SMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    from digest.web import create_app

    smtp = replace(sqlite_settings, mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, public_base_url="http://digest.example.org",
                   secret_key="k" * 40)
    levels = by_name(smtp)
    assert levels["links"] is Level.WARN and levels["smtp"] is Level.OK
    with caplog.at_level(logging.WARNING):
        create_app(smtp)
    assert "List-Unsubscribe" in caplog.text
    assert by_name(replace(smtp, public_base_url="https://digest.example.org"))["links"] \
        is Level.OK


def test_health_json_reports_each_check_and_fails_only_on_a_failure(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(main, ["db", "upgrade"], env={"DATA_DIR": str(tmp_path), "DATABASE_URL": ""})
    good = runner.invoke(main, ["health", "--json"], env={
        "DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0", "DATABASE_URL": "",
        "SECRET_KEY": "", "MAIL_BACKEND": "file"})
    report = json.loads(good.output)
    assert good.exit_code == 0 and report["ok"], good.output
    assert {c["name"]: c["level"] for c in report["checks"]}["database"] == "ok"
    bad = runner.invoke(main, ["health", "--json"], env={
        "DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "",
        "SECRET_KEY": "", "MAIL_BACKEND": "file"})
    report = json.loads(bad.output)
    assert bad.exit_code == 1 and not report["ok"]
    levels = {c["name"]: c["level"] for c in report["checks"]}
    assert levels["redis"] == "fail" and levels["database"] == "ok"  # and the rest still ran
    text = runner.invoke(main, ["health"], env={
        "DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": ""})
    assert text.exit_code == 1 and "redis" in text.output and "templates" in text.output
