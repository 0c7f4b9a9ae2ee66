"""Feedback: what readers tell us about the papers of their digests, and what it teaches.

Every paper link in a digest goes through `/feedback/<token>/<paper>/open` (or `/pdf`), which
records a click and redirects to the paper (a link from someone else's token, or none, is
redirected only to a host the paper's source uses: see `follow_link`); each paper also has
"more like this" and "less like this" links, whose page has one button that records the vote
(a GET changes nothing: mail scanners follow links). A reader's next digest learns from
these rows: `signals_for` turns them into weighted papers, and scoring moves the reader's
profile toward the papers they liked and away from those they did not (Rocchio; see
`score.DayIndex`).

Signals: "more like this" +1, a click +0.5, "less like this" -1; a vote outweighs a click on
the same paper, and "more" and "less" replace each other. A burst of clicks on many papers
within seconds is a link scanner opening the whole email, not a reader, and teaches nothing.
Only the newest `MAX_SIGNALS` papers count, so tastes can move, and changing one's topics
starts the learning afresh.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from sqlalchemy import Select, delete, exists, select
from sqlalchemy.orm import Session

from . import db, tokens
from .cards import keywords
from .models import DeliveryItem, FeedbackKind, Paper, PaperFeedback, Subscriber, TopicProfile
from .render.filters import safe_url
from .score import FeedbackSignal, make_vectorizer, paper_text, readable_terms
from .settings import Settings
from .subscribers import UnknownSubscriber, linked_subscriber

WEIGHTS = {FeedbackKind.MORE: 1.0, FeedbackKind.CLICK: 0.5, FeedbackKind.LESS: -1.0}
MAX_SIGNALS = 50
SCANNER_BURST = 4  # this many different papers clicked ...
SCANNER_WINDOW = timedelta(seconds=10)  # ... within this long: a scanner, not a reader
OPPOSITE = {FeedbackKind.MORE: FeedbackKind.LESS, FeedbackKind.LESS: FeedbackKind.MORE}
# The hosts each source's paper links use (ingest.py makes and keeps them): anyone may be
# redirected to these from our address. A feed can give a paper a link to any host; such a
# link is followed only from the digest of a reader it was sent to.
SOURCE_HOSTS = {
    "page": ("arxiv.org",),
    "daily-papers": ("huggingface.co", "arxiv.org"),
    "arxiv": ("arxiv.org",),
}
_PLAIN_NETLOC = re.compile(r"[A-Za-z0-9.-]+(?::\d{1,5})?")  # no user@, no backslash tricks


class NotInTheirDigest(LookupError):
    """The paper was never sent to this subscriber, so their feedback on it is not taken."""


# --- recording -----------------------------------------------------------------------------


def was_sent(session: Session, subscriber_id: int, paper_id: int) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    DeliveryItem.subscriber_id == subscriber_id, DeliveryItem.paper_id == paper_id
                )
            )
        )
    )


def record(
    session: Session, subscriber_id: int, paper_id: int, kind: FeedbackKind, now: datetime
) -> None:
    """Record a click or a vote on a paper of the subscriber's digests; repeating is harmless.

    A vote replaces the opposite vote on the same paper and its time is renewed; a second
    click on a paper is the same click.
    """
    if not was_sent(session, subscriber_id, paper_id):
        raise NotInTheirDigest("That paper was not in your digests.")
    if kind in OPPOSITE:
        session.execute(
            delete(PaperFeedback).where(
                PaperFeedback.subscriber_id == subscriber_id,
                PaperFeedback.paper_id == paper_id,
                PaperFeedback.kind == OPPOSITE[kind],
            )
        )
    insert = db.dialect_insert(session)
    statement = insert(PaperFeedback).values(
        subscriber_id=subscriber_id, paper_id=paper_id, kind=kind, created_at=now
    )
    keys = ["subscriber_id", "paper_id", "kind"]
    if kind is FeedbackKind.CLICK:
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    else:
        statement = statement.on_conflict_do_update(index_elements=keys, set_={"created_at": now})
    session.execute(statement)


def current_vote(session: Session, subscriber_id: int, paper_id: int) -> FeedbackKind | None:
    """The reader's standing vote on a paper ("more" or "less"), if any."""
    return session.scalar(
        select(PaperFeedback.kind).where(
            PaperFeedback.subscriber_id == subscriber_id,
            PaperFeedback.paper_id == paper_id,
            PaperFeedback.kind.in_(tuple(OPPOSITE)),
        )
    )


@dataclass(frozen=True)
class Destination:
    url: str
    redirect: bool  # False: show the address on a page; never send the visitor there


def follow_link(
    settings: Settings, token: str, paper_id: int, target: str, now: datetime, record_click: bool
) -> Destination | None:
    """Where a digest's paper link leads (the paper page or its PDF), recording the click.

    The destination is the paper's own stored URL, never one taken from the request. With
    the token of the reader it was sent to, that URL is followed and the click counted.
    Otherwise (a forged, expired or foreign link) nothing is recorded and the URL is
    followed only if its host is one the paper's source uses, so a feed's link to any other
    host cannot turn our address into an open redirect.
    """
    with db.session_scope(settings) as session:
        paper = session.get(Paper, paper_id)
        if paper is None:
            return None
        destination = safe_url(paper.pdf_url if target == "pdf" else paper.url) or safe_url(
            paper.url
        )
        if not destination:
            return None
        reader = _reader(session, settings, token, paper_id)
        # A reader who turned click tracking off is not counted, even from a digest sent
        # while it was on (its links still lead to the paper).
        if reader is not None and record_click and reader.click_tracking:
            record(session, reader.id, paper_id, FeedbackKind.CLICK, now)
        trusted = reader is not None or is_source_host(paper.source, destination)
        return Destination(destination, redirect=trusted)


def _reader(
    session: Session, settings: Settings, token: str, paper_id: int
) -> Subscriber | None:
    """The subscriber whose genuine link this is, if the paper was sent to them."""
    try:
        claim = tokens.read_claim(settings, tokens.Purpose.FEEDBACK, token)
        subscriber = linked_subscriber(session, claim)
    except (tokens.InvalidToken, UnknownSubscriber):
        return None
    return subscriber if was_sent(session, subscriber.id, paper_id) else None


def is_source_host(source: str, url: str) -> bool:
    """Whether `url` points at a host that papers from `source` link to."""
    netloc = urlsplit(url).netloc
    if not _PLAIN_NETLOC.fullmatch(netloc):
        return False
    host = netloc.rsplit(":", 1)[0].lower().rstrip(".")
    return any(host == known or host.endswith("." + known)
               for known in SOURCE_HOSTS.get(source, ()))


@dataclass(frozen=True)
class VoteTarget:
    """The paper a "more / less like this" page is about, and the reader's standing vote."""

    subscriber_id: int
    paper_id: int
    title: str
    vote: FeedbackKind | None


def vote_target(session: Session, subscriber_id: int, paper_id: int) -> VoteTarget:
    paper = session.get(Paper, paper_id)
    if paper is None or not was_sent(session, subscriber_id, paper_id):
        raise NotInTheirDigest("That paper was not in your digests.")
    return VoteTarget(subscriber_id, paper_id, paper.title,
                      current_vote(session, subscriber_id, paper_id))


# --- what scoring learns from --------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackRow:
    paper_id: int
    kind: FeedbackKind
    at: datetime
    title: str
    abstract: str
    keywords: tuple[str, ...] = ()  # the paper's ai_keywords: they count as on a day's paper


def signals_for(
    session: Session, subscriber_ids: Sequence[int]
) -> dict[int, tuple[FeedbackSignal, ...]]:
    """Each subscriber's learning signals, for a whole batch in one query."""
    if not subscriber_ids:
        return {}
    rows: dict[int, list[FeedbackRow]] = {}
    for sid, paper_id, kind, at, title, abstract, words in session.execute(
        _feedback_rows(session, subscriber_ids)
    ):
        rows.setdefault(sid, []).append(
            FeedbackRow(paper_id, kind, at, title, abstract, keywords(words))
        )
    return {sid: learning_signals(history) for sid, history in rows.items()}


def _feedback_rows(
    session: Session, subscriber_ids: Sequence[int],
) -> Select[int, int, FeedbackKind, datetime, str, str, Any]:
    """(subscriber, paper, kind, time, title, abstract, keywords) of the feedback that still
    counts. The keywords come along so that a rated paper reads the same whether or not it
    is among the day's papers (whose text has them: `cards.candidate_paper`).

    Feedback given before the subscriber last changed their topics is not used: someone who
    switched from LoRA to diffusion models wants diffusion papers, not more of what they
    liked under the old topics.
    """
    return (
        select(
            PaperFeedback.subscriber_id, PaperFeedback.paper_id, PaperFeedback.kind,
            PaperFeedback.created_at, Paper.title, Paper.abstract, Paper.ai_keywords,
        )
        .join(Paper, Paper.id == PaperFeedback.paper_id)
        .join(TopicProfile, TopicProfile.subscriber_id == PaperFeedback.subscriber_id)
        .where(
            db.among(session, PaperFeedback.subscriber_id, subscriber_ids),
            PaperFeedback.created_at >= TopicProfile.updated_at,
        )
        .order_by(PaperFeedback.subscriber_id, PaperFeedback.created_at, PaperFeedback.id)
    )


def scanner_clicks(rows: Iterable[FeedbackRow]) -> set[tuple[int, datetime]]:
    """(paper, time) of clicks that came in a burst: SCANNER_BURST papers in SCANNER_WINDOW."""
    clicks = sorted((r.at, r.paper_id) for r in rows if r.kind is FeedbackKind.CLICK)
    flagged: set[tuple[int, datetime]] = set()
    start = 0
    for end in range(len(clicks)):
        while clicks[end][0] - clicks[start][0] > SCANNER_WINDOW:
            start += 1
        if end - start + 1 >= SCANNER_BURST:
            flagged.update((paper, at) for at, paper in clicks[start : end + 1])
    return flagged


def learning_signals(rows: Sequence[FeedbackRow]) -> tuple[FeedbackSignal, ...]:
    """One weighted signal per paper, newest MAX_SIGNALS papers, scanner bursts left out."""
    ignored = scanner_clicks(rows)
    best: dict[int, tuple[float, datetime, FeedbackRow]] = {}
    for row in rows:
        if row.kind is FeedbackKind.CLICK and (row.paper_id, row.at) in ignored:
            continue
        weight = WEIGHTS[row.kind]
        held = best.get(row.paper_id)
        # A vote outweighs a click; between votes the latest wins (only one is ever stored).
        if held is None or abs(weight) > abs(held[0]) or (
            abs(weight) == abs(held[0]) and row.at >= held[1]
        ):
            best[row.paper_id] = (weight, max(row.at, held[1]) if held else row.at, row)
    newest = sorted(best.values(), key=lambda item: item[1], reverse=True)[:MAX_SIGNALS]
    return tuple(
        FeedbackSignal(
            paper_id=row.paper_id, weight=weight, title=row.title,
            text=paper_text(row.title, row.abstract, keywords=row.keywords),
        )
        for weight, _, row in newest
    )


# --- what `digest subscribers show` says ---------------------------------------------------


@dataclass(frozen=True)
class LearnedProfile:
    """What a subscriber's profile has learned, in words an admin can read."""

    more: tuple[str, ...]  # titles, newest first
    less: tuple[str, ...]
    clicked: tuple[str, ...]
    scanner_clicks: int  # clicks left out as a link scanner's
    toward: tuple[str, ...]  # the terms the profile leans toward ...
    away: tuple[str, ...]  # ... and away from

    @property
    def empty(self) -> bool:
        return not (self.more or self.less or self.clicked or self.scanner_clicks)


def learned_profile(session: Session, subscriber: Subscriber, terms: int = 8) -> LearnedProfile:
    """The subscriber's signals and the terms they move the profile by.

    The terms come from a TF-IDF fitted on the papers they gave feedback on plus the latest
    archive, so they read as "what distinguishes what they liked", not as common words.
    """
    rows = [
        FeedbackRow(paper_id, kind, at, title, abstract, keywords(words))
        for _, paper_id, kind, at, title, abstract, words in session.execute(
            _feedback_rows(session, [subscriber.id])
        )
    ]
    signals = learning_signals(rows)
    by_kind = {
        kind: tuple(s.title for s in signals if s.weight == weight)
        for kind, weight in WEIGHTS.items()
    }
    toward, away = _learned_terms(session, signals, terms)
    return LearnedProfile(
        more=by_kind[FeedbackKind.MORE], less=by_kind[FeedbackKind.LESS],
        clicked=by_kind[FeedbackKind.CLICK], scanner_clicks=len(scanner_clicks(rows)),
        toward=toward, away=away,
    )


def _learned_terms(
    session: Session, signals: Sequence[FeedbackSignal], count: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not signals:
        return (), ()
    archive = [
        paper_text(title, abstract, keywords=keywords(words))
        for title, abstract, words in session.execute(
            select(Paper.title, Paper.abstract, Paper.ai_keywords)
            .order_by(Paper.id.desc())
            .limit(2000)
        )
    ]
    corpus = archive + [s.text for s in signals]
    vectorizer = make_vectorizer(len(corpus)).fit(corpus)
    vectors = vectorizer.transform([s.text for s in signals])
    weights = np.array([s.weight for s in signals])
    terms = vectorizer.get_feature_names_out()

    def top(side: np.ndarray) -> tuple[str, ...]:
        if not side.any():
            return ()
        centroid = np.asarray(vectors.T @ side).ravel()
        best = [str(terms[i]) for i in np.argsort(-centroid) if centroid[i] > 0]
        # Terms are stems ("quantiz"); an admin reads the words the papers use, each once.
        words = readable_terms(best[: 2 * count], [s.text for s in signals])
        return tuple(dict.fromkeys(words))[:count]

    return top(np.clip(weights, 0, None)), top(np.clip(-weights, 0, None))

