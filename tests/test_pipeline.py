"""The whole day, end to end: database → score → render → a real SMTP server, on both databases."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from email.message import EmailMessage
from html.parser import HTMLParser

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from digest import db, pipeline, prepare
from digest.models import (
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    Paper,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
)
from digest.pipeline import run_day
from digest.pool import run_jobs
from digest.settings import Settings
from digest.status import SKIP_ALREADY_SENT, SKIP_NO_MATCH
from digest.subscribers import subscriber_history
from digest.tokens import Purpose, read_token
from digest.webhooks import EventType, MailEvent, apply_event

from .factories import make_paper, make_subscriber
from .smtp_server import SMTPServer

DAY = date(2026, 11, 23)
MORNING = datetime(2026, 11, 23, 6, tzinfo=timezone.utc)
HOSTILE_TITLE = 'LoRA tricks <script>alert("x")</script>\r\nBcc: victim@example.com'


def seed_papers(session: Session, first_seen: datetime = MORNING) -> dict[str, int]:
    papers = {
        "lora": make_paper(
            session, title="LoRA: Low-Rank Adaptation of Large Language Models",
            abstract="We freeze pretrained weights and inject trainable low-rank matrices (LoRA) "
                     "for parameter-efficient fine-tuning of large language models.",
            upvotes=120, first_seen_at=first_seen, published_at=first_seen),
        "hostile": make_paper(
            session, title=HOSTILE_TITLE,
            abstract="Low-rank adaptation with <b>bold</b> claims & ampersands for LoRA.",
            first_seen_at=first_seen, published_at=first_seen),
        "diffusion": make_paper(
            session, title="Denoising Diffusion Models for Image Generation",
            abstract="Diffusion models generate images by iterative denoising.",
            upvotes=40, first_seen_at=first_seen, published_at=first_seen),
        "rl": make_paper(
            session, title="Reward Models for Reinforcement Learning from Human Feedback",
            abstract="We train reward models from human preference data for RLHF.",
            first_seen_at=first_seen, published_at=first_seen),
    }
    return {k: p.id for k, p in papers.items()}


@pytest.fixture
def smtp_settings(settings: Settings, smtp_server: SMTPServer) -> Settings:
    return replace(settings, mail_backend="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.port,
                   min_relevance=0.05)


def visible_links(html: str) -> dict[str, str]:
    """Map each link's visible text to its href, as a reader's mail client shows them."""

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.links: dict[str, str] = {}
            self._href: str | None = None
            self._text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                self._href, self._text = dict(attrs).get("href"), []

        def handle_data(self, data: str) -> None:
            if self._href is not None:
                self._text.append(data)

        def handle_endtag(self, tag: str) -> None:
            if tag == "a" and self._href is not None:
                self.links[" ".join("".join(self._text).split())] = self._href
                self._href = None

    parser = Links()
    parser.feed(html)
    return parser.links


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_each_subscriber_gets_one_digest_with_the_right_papers(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    ids = seed_papers(session)
    lora = make_subscriber(session, email="ada@example.org", topics="LoRA, low-rank adaptation")
    make_subscriber(session, email="grace@example.org", topics="diffusion models, image generation")
    make_subscriber(session, email="nobody@example.org", topics="medieval poetry")
    make_subscriber(session, email="fallback@example.org", topics="medieval poetry",
                    trending_fallback=True, papers_per_digest=2)
    make_subscriber(session, email="pending@example.org", status=SubscriberStatus.PENDING)
    make_subscriber(session, email="gone@example.org", status=SubscriberStatus.UNSUBSCRIBED)
    session.commit()

    report = run_day(smtp_settings, DAY)

    received = smtp_server.by_recipient()
    assert sorted(received) == ["ada@example.org", "fallback@example.org", "grace@example.org"]
    assert all(len(messages) == 1 for messages in received.values())
    assert sorted(report.sent) == sorted(received)
    assert report.skipped[SKIP_NO_MATCH] == 1
    # A few connections (SMTP_CONNECTIONS), each reused for many messages.
    assert 1 <= smtp_server.connections <= smtp_settings.smtp_connections

    message = received["ada@example.org"][0]
    text, html = parts(message)
    assert message["To"] == "ada@example.org"
    assert "23 Nov" in message["Subject"] and "2 new papers" in message["Subject"]
    assert message["Bcc"] is None and "\n" not in message["Subject"]
    assert message["Message-ID"] == session.scalar(
        select(Delivery.message_id).where(Delivery.subscriber_id == lora.id))
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_https = message["List-Unsubscribe"].split(",")[0].strip(" <>")
    assert "mailto:" in message["List-Unsubscribe"]
    assert read_token(smtp_settings, Purpose.UNSUBSCRIBE, unsubscribe_https.rsplit("/", 1)[1]) \
        == lora.id

    links = visible_links(html)
    # Click tracking is off unless the reader turns it on: the paper's link is the paper's own.
    paper_link = links["LoRA: Low-Rank Adaptation of Large Language Models"]
    assert paper_link == session.get(Paper, ids["lora"]).url
    assert "/feedback/" not in paper_link
    assert links["More like this"].endswith("/more") and links["Less like this"].endswith("/less")
    assert links.get("Unsubscribe") == unsubscribe_https
    assert "Change preferences" in links or "Preferences" in links
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "LoRA: Low-Rank Adaptation of Large Language Models" in text
    assert unsubscribe_https in text

    fallback_text, _ = parts(received["fallback@example.org"][0])
    assert "trending" in fallback_text.lower()

    delivered = session.scalars(
        select(DeliveryItem.paper_id).where(DeliveryItem.subscriber_id == lora.id)).all()
    assert set(delivered) == {ids["lora"], ids["hostile"]}
    statuses = sorted(s.value for s in session.scalars(select(Delivery.status)).all())
    assert statuses == ["sent", "sent", "sent", "skipped"]  # the ledger records the skip too


def test_a_second_run_the_same_day_sends_nothing(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    make_subscriber(session, topics="LoRA")
    session.commit()
    assert len(run_day(smtp_settings, DAY).sent) == 1
    again = run_day(smtp_settings, DAY)
    assert again.sent == [] and again.skipped[SKIP_ALREADY_SENT] == 1
    assert len(smtp_server.received) == 1


def test_the_next_day_brings_only_new_papers_never_the_same_twice(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    sub = make_subscriber(session, topics="LoRA, low-rank adaptation", papers_per_digest=1)
    session.commit()
    run_day(smtp_settings, DAY)
    # Nothing new tomorrow: no empty email.
    tomorrow = run_day(smtp_settings, DAY + timedelta(days=1))
    assert tomorrow.sent == [] and tomorrow.skipped[SKIP_NO_MATCH] == 1
    make_paper(session, title="DoRA: Weight-Decomposed Low-Rank Adaptation",
               abstract="An improvement over LoRA for low-rank adaptation.",
               first_seen_at=MORNING + timedelta(days=2))
    session.commit()
    assert len(run_day(smtp_settings, DAY + timedelta(days=2)).sent) == 1
    titles = session.scalars(
        select(DeliveryItem.paper_id).where(DeliveryItem.subscriber_id == sub.id)).all()
    assert len(titles) == len(set(titles)) == 2
    subjects = [m["Subject"] for m in smtp_server.messages]
    assert len(subjects) == 2


def test_a_refused_address_is_suppressed_and_the_rest_still_go(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    bad = make_subscriber(session, email="bounce@example.org", topics="LoRA")
    make_subscriber(session, email="grace@example.org", topics="LoRA")
    session.commit()
    smtp_server.reject_recipients.add("bounce@example.org")
    report = run_day(smtp_settings, DAY)
    assert sorted(report.sent) == ["ada@example.org", "grace@example.org"]
    assert [email for email, _ in report.failed] == ["bounce@example.org"]
    session.expire_all()
    assert session.get(Subscriber, bad.id).status is SubscriberStatus.BOUNCED
    assert session.scalar(select(Delivery.status).where(Delivery.subscriber_id == bad.id)) \
        is DeliveryStatus.FAILED


def test_a_refusal_by_smtp_leaves_the_records_a_bounce_webhook_leaves(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    """Whoever tells us an address bounced, the mail server or the provider's webhook, the
    address is on the suppression list, its subscriber BOUNCED, and their history says so."""
    seed_papers(session)
    refused = make_subscriber(session, email="refused@example.org", topics="LoRA")
    reported = make_subscriber(session, email="reported@example.org", topics="LoRA")
    session.commit()
    smtp_server.reject_recipients.add("refused@example.org")
    run_day(smtp_settings, DAY)
    event = MailEvent("e1", EventType.BOUNCE, "reported@example.org", detail="550 5.1.1 gone")
    apply_event(session, "postmark", event, MORNING)
    session.commit()
    session.expire_all()

    def records(subscriber: Subscriber) -> tuple[object, ...]:
        row = session.scalars(
            select(Suppression).where(Suppression.address == subscriber.email)).one()
        events = [(e.what, bool(e.detail)) for e in subscriber_history(session, subscriber)
                  if e.what != "delivery"]
        return row.reason, bool(row.detail), subscriber.status, events

    assert records(refused) == records(reported) == (
        SuppressionReason.BOUNCED, True, SubscriberStatus.BOUNCED, [("bounced", True)])
    source = select(Suppression.source).where(Suppression.address == refused.email)
    assert session.scalar(source) == "smtp"


def test_a_temporary_failure_releases_the_claim_so_a_rerun_delivers(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()
    quick = replace(smtp_settings, smtp_retry_base_delay=0.01)
    # The failure outlasts every retry of the first run.
    smtp_server.fail_next.extend(["451 4.3.0 Try again later"] * quick.smtp_retry_attempts)
    first = run_day(quick, DAY)
    assert first.sent == [] and "temporary" in first.failed[0][1]
    second = run_day(quick, DAY)
    assert second.sent == ["ada@example.org"]
    assert len(smtp_server.received) == 1


def test_dry_run_claims_and_sends_nothing(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    make_subscriber(session, topics="LoRA")
    session.commit()
    report = run_day(smtp_settings, DAY, dry_run=True)
    assert len(report.sent) == 1 and "would send" in report.summary()
    assert smtp_server.received == []
    assert session.scalars(select(Delivery)).all() == []


def test_file_outbox_is_the_default_and_has_an_index(session: Session, settings: Settings) -> None:
    seed_papers(session)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()
    report = run_day(settings, DAY)
    assert report.outbox_index is not None and report.outbox_index.is_file()
    index = report.outbox_index.read_text()
    assert "ada@example.org" in index
    assert len(list(settings.outbox_dir.rglob("*.eml"))) == 1


def test_a_worker_keeps_each_local_day_prepared_while_their_batches_interleave(
    session: Session, settings: Settings
) -> None:
    seed_papers(session)
    session.commit()
    yesterday, tomorrow = DAY - timedelta(days=1), DAY + timedelta(days=1)
    first = {d: prepare.prepared_day(session, settings, d) for d in (yesterday, DAY, tomorrow)}
    for d in (DAY, yesterday, tomorrow, DAY, tomorrow, yesterday):  # as a tick's batches come
        assert prepare.prepared_day(session, settings, d) is first[d]

    make_paper(session, title="A late paper on LoRA", first_seen_at=MORNING)
    session.commit()
    fresh = prepare.prepared_day(session, settings, DAY)
    assert fresh is not first[DAY]
    assert "A late paper on LoRA" in {c.title for c in fresh.cards.values()}

    # A fourth day pushes out the least recently used: tomorrow (yesterday came after it).
    prepare.prepared_day(session, settings, DAY + timedelta(days=2))
    assert prepare.prepared_day(session, settings, yesterday) is first[yesterday]
    assert prepare.prepared_day(session, settings, tomorrow) is not first[tomorrow]


def test_each_window_records_what_its_digests_carry_and_closes_what_went_out(
    session: Session, settings: Settings
) -> None:
    """Windows of two: each row ends SENT with its send time, its paper count (the papers
    attached to it) and whether it fell back to trending, whichever window carried it."""
    seed_papers(session)
    readers = [make_subscriber(session, email=f"w{n}@example.org", topics=topics)
               for n, topics in enumerate(["LoRA", "diffusion", "LoRA, diffusion",
                                           "reward models", "LoRA"])]
    session.commit()
    report = run_day(replace(settings, ledger_window=2, mail_backend="console"), DAY)
    assert sorted(report.sent) == sorted(r.email for r in readers)
    session.expire_all()
    rows = session.execute(select(Delivery).where(Delivery.digest_date == DAY)).scalars().all()
    attached = {sid: len(ids) for sid, ids in _papers_by_reader(session).items()}
    assert len(rows) == 5 and {d.status for d in rows} == {DeliveryStatus.SENT}
    assert all(d.sent_at is not None and d.error is None for d in rows)
    assert {d.subscriber_id: d.paper_count for d in rows} == attached
    assert all(count > 0 for count in attached.values())
    assert {d.trending_fallback for d in rows} == {False}


@pytest.mark.parametrize("backend, windows", [("file", [5]), ("console", [2, 2, 1])])
def test_only_the_file_outbox_sends_a_whole_batch_as_one_window(
    session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str,
    windows: list[int],
) -> None:
    """The outbox settles a crashed window exactly, so one SENDING mark a batch is enough;
    a backend nothing can check afterwards keeps LEDGER_WINDOW's bound on what is in doubt.
    The first window is claimed straight into SENDING, the others marked before each goes."""
    seed_papers(session)
    for n in range(5):
        make_subscriber(session, email=f"o{n}@example.org", topics="LoRA")
    session.commit()
    marked: list[int] = []
    claim_composed, start_sending = pipeline.ledger.claim_composed, pipeline.ledger.start_sending

    def claimed(*args: object, **kwargs: object) -> list[object]:
        rows = args[5]
        marked.append(sum(row.status is DeliveryStatus.SENDING for row in rows))  # type: ignore[attr-defined]
        return claim_composed(*args, **kwargs)  # type: ignore[arg-type]

    def counted(*args: object, **kwargs: object) -> set[int]:
        marked.append(len(args[3]))  # type: ignore[arg-type]
        return start_sending(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.ledger, "claim_composed", claimed)
    monkeypatch.setattr(pipeline.ledger, "start_sending", counted)
    report = run_day(replace(settings, ledger_window=2, mail_backend=backend), DAY)
    assert len(report.sent) == 5
    assert marked == windows


def test_a_batch_that_dies_before_its_claim_commits_leaves_its_rows_planned(
    session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is composed first and claimed with its papers in one transaction: a batch that
    dies before that commit has taken and attached nothing, and the next run, without waiting
    for any lease, sends each digest once."""
    seed_papers(session)
    readers = [make_subscriber(session, email=f"d{n}@example.org", topics="LoRA")
               for n in range(3)]
    session.commit()

    def killed(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the process died before the claim was committed")

    monkeypatch.setattr(pipeline.ledger, "attach_items", killed)
    with pytest.raises(RuntimeError, match="before the claim"):
        run_day(settings, DAY)
    monkeypatch.undo()
    session.expire_all()
    rows = session.execute(select(Delivery).where(Delivery.digest_date == DAY)).scalars().all()
    assert len(rows) == 3
    assert all(d.status is DeliveryStatus.CLAIMED and d.claim_token is None for d in rows)
    assert _papers_by_reader(session) == {}
    assert not list(settings.outbox_dir.rglob("*.eml"))

    report = run_day(settings, DAY)
    assert sorted(report.sent) == sorted(r.email for r in readers)
    session.expire_all()
    assert set(_papers_by_reader(session)) == {r.id for r in readers}
    assert len(list(settings.outbox_dir.rglob("*.eml"))) == 3


def _papers_by_reader(session: Session) -> dict[int, set[int]]:
    papers: dict[int, set[int]] = {}
    for sid, paper_id in session.execute(select(DeliveryItem.subscriber_id,
                                                DeliveryItem.paper_id)):
        papers.setdefault(sid, set()).add(paper_id)
    return papers


def test_database_round_trips_per_batch_do_not_grow_with_subscribers(
    session: Session, settings: Settings
) -> None:
    seed_papers(session)
    for n in range(60):
        make_subscriber(session, email=f"r{n}@example.org", topics="LoRA, diffusion")
    session.commit()
    engine = db.engine_for(settings.database_url)

    def statements_for(batch_size: int, day: date) -> int:
        count = 0

        def on_execute(*_args: object) -> None:
            nonlocal count
            count += 1

        event.listen(engine, "before_cursor_execute", on_execute)
        try:
            run_day(replace(settings, batch_size=batch_size, mail_backend="console"), day)
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)
        return count

    small = statements_for(10, DAY)  # 6 batches of 10
    large = statements_for(60, DAY + timedelta(days=1))  # 1 batch of 60
    # Same number of subscribers: per-batch cost is constant, so fewer batches, fewer queries.
    assert large < small
    per_batch = (small - large) / 5
    assert per_batch <= 9, per_batch


def test_a_connection_lost_after_the_message_is_in_doubt_and_never_resent(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    sub = make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()
    smtp_server.drop_next_data = 1  # the server queues the message, then hangs up
    first = run_day(smtp_settings, DAY)
    assert first.sent == [] and "in doubt" in first.failed[0][1]
    assert session.scalar(select(Delivery.status).where(Delivery.subscriber_id == sub.id)) \
        is DeliveryStatus.IN_DOUBT
    second = run_day(smtp_settings, DAY)
    assert second.sent == [] and len(smtp_server.received) == 1


# --- a big day on every core --------------------------------------------------------------


def readers(session: Session, count: int) -> list[str]:
    emails = [f"r{n:02d}@example.org" for n in range(count)]
    for email in emails:
        make_subscriber(session, email=email, topics="LoRA")
    session.commit()
    return emails


def test_a_big_day_is_shared_by_processes_and_each_digest_goes_once(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    emails = readers(session, 24)
    shared = replace(smtp_settings, batch_size=2, run_jobs=2)
    assert run_jobs(shared, 12) == 2 and run_jobs(shared, 6) == 1  # small days: one process
    report = run_day(shared, DAY)
    assert sorted(report.sent) == emails and report.failed == []
    assert sorted(str(m["To"]) for m in smtp_server.messages) == emails
    again = run_day(shared, DAY)
    assert again.sent == [] and again.skipped[SKIP_ALREADY_SENT] == 24
    assert len(smtp_server.received) == 24


def test_processes_writing_the_file_outbox_leave_one_index_of_every_message(
    session: Session, settings: Settings
) -> None:
    seed_papers(session)
    emails = readers(session, 20)
    report = run_day(replace(settings, batch_size=2, run_jobs=2), DAY)
    assert len(report.sent) == 20 and report.outbox_index is not None
    index = report.outbox_index.read_text()
    assert all(email in index for email in emails)
    assert len(list(settings.outbox_dir.rglob("*.eml"))) == 20
    assert len(list(settings.outbox_dir.rglob("*.html"))) == 21  # a copy of each, the index


def test_a_failed_process_is_reported_and_the_next_run_sends_what_it_left(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_papers(session)
    emails = readers(session, 24)
    shared = replace(smtp_settings, batch_size=2, run_jobs=2, claim_lease_seconds=1)
    doomed = session.scalar(select(Subscriber.id).where(Subscriber.email == emails[5]))
    real = pipeline.process_batch

    def failing(session: Session, settings: Settings, prepared: object, batch: list[int],
                sender: object) -> object:
        if doomed in batch:
            raise OSError("disk on fire")
        return real(session, settings, prepared, batch, sender)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "process_batch", failing)
    with pytest.raises(RuntimeError, match="disk on fire") as failure:
        run_day(shared, DAY)
    assert "1 of 2 run processes failed" in str(failure.value)
    assert "CLAIM_LEASE_SECONDS" in str(failure.value)
    first = len(smtp_server.received)
    assert 0 < first < 24  # the other process sent its share
    monkeypatch.undo()
    rest = run_day(shared, DAY)  # at once: nothing it left was ever handed to the server
    assert len(rest.sent) == 24 - first
    assert sorted(str(m["To"]) for m in smtp_server.messages) == emails  # each exactly once


def test_a_daemonic_process_runs_the_day_itself(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert run_jobs(replace(settings, run_jobs=4), 100) == 1  # a Celery pool worker, say


def test_a_huge_stored_paper_makes_a_digest_of_ordinary_size(
    session: Session, settings: Settings
) -> None:
    """Whatever a source stored (a 5 MB title, ten thousand authors), a card carries a bounded
    amount, so one paper cannot make every matching reader's email megabytes long."""
    from pathlib import Path

    huge = make_paper(session, title="LoRA " + "x" * 5_000_000,
                      abstract="Low-rank adaptation (LoRA). " + "y " * 500_000,
                      first_seen_at=MORNING, published_at=MORNING)
    huge.authors = [f"Author {n} " + "z" * 1000 for n in range(10_000)]
    huge.url = "https://arxiv.org/abs/" + "9" * 5000
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()
    assert run_day(settings, DAY).sent == ["ada@example.org"]
    [eml] = Path(settings.outbox_dir).glob("*/*.eml")
    assert eml.stat().st_size < 100_000
    text = eml.read_bytes()
    assert b"x" * 301 not in text and b"z" * 101 not in text and b"9" * 2049 not in text
