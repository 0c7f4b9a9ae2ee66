"""The suppression list and its policy, and the admin commands over it (both databases for
the library; the CLI on its embedded SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from digest.cli import main
from digest.lifecycle import request_subscription
from digest.models import SignupOutcome, SubscriberStatus, SuppressionReason
from digest.subscribers import Preferences
from digest.suppressions import (
    SuppressionError,
    is_suppressed,
    list_suppressions,
    suppress_address,
    unsuppress_address,
)

from .factories import make_subscriber

PREFS = Preferences("LoRA", "UTC", 7, 10)


@pytest.mark.parametrize(
    "reason, status",
    [(SuppressionReason.BOUNCED, SubscriberStatus.BOUNCED),
     (SuppressionReason.COMPLAINED, SubscriberStatus.COMPLAINED),
     (SuppressionReason.MANUAL, SubscriberStatus.UNSUBSCRIBED)],
)
def test_suppressing_stops_the_subscriber_once(
    session: Session, reason: SuppressionReason, status: SubscriberStatus
) -> None:
    sub = make_subscriber(session, email="Ada@Example.org")
    first = suppress_address(session, " ADA@example.org ", reason, "cli", "why")
    again = suppress_address(session, "ada@example.org", reason, "cli")
    assert first.created and not again.created
    assert sub.status is status
    assert [r.address for r in list_suppressions(session)] == ["ada@example.org"]
    assert is_suppressed(session, "ADA@EXAMPLE.ORG")


def test_a_complaint_is_not_downgraded_by_a_later_bounce(session: Session) -> None:
    sub = make_subscriber(session, email="ada@example.org")
    suppress_address(session, "ada@example.org", SuppressionReason.COMPLAINED, "webhook:x")
    suppress_address(session, "ada@example.org", SuppressionReason.BOUNCED, "webhook:y")
    assert sub.status is SubscriberStatus.COMPLAINED


def test_a_suppressed_address_cannot_subscribe_until_lifted_and_then_must_confirm(
    session: Session,
) -> None:
    suppress_address(session, "ada@example.org", SuppressionReason.BOUNCED, "webhook:sendgrid")
    assert request_subscription(session, "ada@example.org", PREFS).outcome is (
        SignupOutcome.SUPPRESSED)
    sub = make_subscriber(session, email="grace@example.org", status=SubscriberStatus.BOUNCED)
    assert is_suppressed(session, "grace@example.org")  # the pipeline's SMTP bounces count too
    assert request_subscription(session, "grace@example.org", PREFS).outcome is (
        SignupOutcome.SUPPRESSED)
    assert unsuppress_address(session, "grace@example.org", "cli").created
    assert sub.status is SubscriberStatus.UNSUBSCRIBED  # not silently re-enabled
    signup = request_subscription(session, "grace@example.org", PREFS)
    assert signup.outcome is SignupOutcome.CONFIRMATION
    assert not unsuppress_address(session, "nobody@example.org", "cli").created


# --- the admin commands -----------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": "", "MAIL_BACKEND": "file",
           "PUBLIC_BASE_URL": "https://digest.test", "SECRET_KEY": "cli-test-secret",
           "SEMANTIC_WEIGHT": "0"}  # lexical ranking: no model to load
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def test_suppressions_add_list_remove(cli) -> None:
    assert cli("subscribers", "add", "ada@example.org", "--topics", "LoRA").exit_code == 0
    dry = cli("suppressions", "add", "ada@example.org", "--dry-run")
    assert "Would suppress ada@example.org" in dry.output
    assert "0 suppressed" in cli("suppressions", "list").output
    added = cli("suppressions", "add", "Ada@Example.org", "--note", "asked by phone")
    assert added.exit_code == 0 and "Suppressed ada@example.org (manual)" in added.output
    assert "already suppressed" in cli("suppressions", "add", "ada@example.org").output
    listed = cli("suppressions", "list").output
    assert "ada@example.org" in listed and "manual" in listed and "asked by phone" in listed
    assert "unsubscribed" in cli("subscribers", "show", "ada@example.org").output
    removed = cli("suppressions", "remove", "ada@example.org")
    assert removed.exit_code == 0 and "must confirm" in removed.output
    missing = cli("suppressions", "remove", "ada@example.org")
    assert missing.exit_code == 1 and "not suppressed" in missing.output


def test_subscribers_show_lists_the_history(cli) -> None:
    cli("subscribers", "add", "ada@example.org", "--topics", "LoRA")
    cli("ingest", "--sample")
    cli("run")
    cli("suppressions", "add", "ada@example.org", "--reason", "bounced", "--note", "550 gone")
    out = cli("subscribers", "show", "ada@example.org").output
    history = out.split("History:", 1)[1]
    lines = [line.split() for line in history.strip().splitlines()[1:]]
    assert [line[2] for line in lines] == ["subscribed", "delivery", "bounced"]
    assert "digest of" in history and "sent" in history
    assert "cli" in history and "550 gone" in history


@pytest.mark.parametrize(
    "address", ["not an address", "", "   ", "a@b", "@example.org", "ada@", "ada@@example.org",
                "ada@example.org\r\nBcc: x@example.org", "x" * 330 + "@example.org"],
)
def test_only_an_email_address_can_be_suppressed(session: Session, address: str) -> None:
    with pytest.raises(SuppressionError, match="email address"):
        suppress_address(session, address, SuppressionReason.MANUAL, "cli")
    assert list_suppressions(session) == []


def test_an_address_is_suppressed_in_the_form_its_subscriber_has(session: Session) -> None:
    sub = make_subscriber(session, email="ada@bücher.example")
    change = suppress_address(session, "ADA@xn--bcher-kva.example", SuppressionReason.BOUNCED,
                              "webhook:x")
    assert change.address == "ada@bücher.example" and change.subscriber_id == sub.id
    assert sub.status is SubscriberStatus.BOUNCED


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)])
def test_suppressions_add_refuses_what_is_not_an_address(cli, dry_run: tuple[str, ...]) -> None:
    result = cli("suppressions", "add", "not an address", *dry_run)
    assert result.exit_code == 2
    assert "not a valid email address" in result.output
    assert "Traceback" not in result.output
    assert "0 suppressed" in cli("suppressions", "list").output
