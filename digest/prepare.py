"""Prepare: the day's work every subscriber shares, done once per process and day.

`prepare_day` loads the day's candidate papers and builds their index, cards and renderer;
`prepared_day` keeps the result for the batches this process runs, and builds it again only
when the day's papers change. Weekly readers get a PreparedDay of their own for the same
day, over the week's candidates (`candidate_days`), built only when a batch has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from .cards import candidate_paper, keywords, paper_card
from .clock import CLOCK
from .embeddings import day_semantic_index
from .models import Paper, paper_new_at
from .render.content import PaperCard
from .render.day import DayRenderer
from .score import DayIndex, RankingKnobs, build_day_index, paper_text
from .settings import Settings

ARCHIVE_PAPERS = 20_000  # the newest papers before the window, for the day's TF-IDF


@dataclass
class PreparedDay:
    """Everything that is the same for every subscriber on a day."""

    day: date
    now: datetime
    index: DayIndex
    cards: dict[int, PaperCard]
    renderer: DayRenderer  # compiles the skeleton and each card once, fills them per subscriber
    weekly: bool = False  # the week's candidates, for weekly readers


WEEK_DAYS = 7


def candidate_days(settings: Settings, weekly: bool) -> int:
    """How many days of papers a digest chooses from: LOOKBACK_DAYS, and for a weekly digest
    at least the week (each reader still gets only papers since their last digest)."""
    return max(settings.lookback_days, WEEK_DAYS) if weekly else settings.lookback_days


def day_bounds(day: date, lookback_days: int) -> tuple[datetime, datetime]:
    """Papers new in (start, end] are the day's candidates (`candidates_of`)."""
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=timezone.utc)
    return end - timedelta(days=lookback_days), end


def candidates_of(start: datetime, end: datetime) -> ColumnElement[bool]:
    """The day's candidates: papers new in (start, end], by the date their source gives (their
    listing or publication), else by when they were first seen (`models.paper_new_at`), and
    first seen by the end of the day: a digest dated D carries only papers that had arrived by
    the end of D, which the readers' `since` and retention rely on.

    A range on the indexed expression (ix_papers_new_at); the first-seen bound filters its rows.
    """
    new_at = paper_new_at()
    return and_(new_at > start, new_at <= end, Paper.first_seen_at <= end)


def prepare_day(
    session: Session, settings: Settings, day: date, weekly: bool = False
) -> PreparedDay:
    """Load the day's (or, `weekly`, the week's) candidate papers and do the work every
    subscriber shares, once."""
    start, end = day_bounds(day, candidate_days(settings, weekly))
    now = min(datetime.now(timezone.utc), end)
    papers = list(
        session.scalars(select(Paper).where(candidates_of(start, end)).order_by(Paper.id))
    )
    # The archive's texts carry their keywords as the day's do, so that a keyword weighs the
    # same in the day's IDF whichever side of the window its papers fall.
    archive = list(
        session.execute(
            select(Paper.title, Paper.abstract, Paper.ai_keywords)
            .where(Paper.first_seen_at <= start)
            .order_by(Paper.id.desc())
            .limit(ARCHIVE_PAPERS)
        )
    )
    index = build_day_index(
        [candidate_paper(p) for p in papers],
        [paper_text(t, a, keywords=keywords(k)) for t, a, k in reversed(archive)],
        now,
        RankingKnobs.from_settings(settings),
        semantic=day_semantic_index(settings, papers),
    )
    return PreparedDay(
        day=day, now=now, index=index, cards={p.id: paper_card(p, start) for p in papers},
        renderer=DayRenderer(day, settings.public_base_url), weekly=weekly,
    )


_PREPARED: dict[tuple[str, date, bool], tuple[tuple[object, ...], PreparedDay]] = {}
# At one moment the world's local dates span up to three (UTC-12 to UTC+14), and a tick's
# batches of those days reach a worker interleaved: keeping one day would rebuild it at every
# switch. Three days, each for daily and weekly readers, is the most a tick needs.
DAYS_KEPT = 6


def forget_prepared_days(database_url: str) -> None:
    """Drop the days kept for `database_url`: a database thrown away (a bench run's) would
    otherwise hold one of the DAYS_KEPT places, and its memory, until pushed out."""
    for key in [key for key in _PREPARED if key[0] == database_url]:
        del _PREPARED[key]


def prepared_day(
    session: Session, settings: Settings, day: date, weekly: bool = False
) -> PreparedDay:
    """The day's PreparedDay, built once per process and reused by every batch it runs.

    It is rebuilt only when the day's candidate papers change (a fingerprint query); the
    DAYS_KEPT most recently used days are kept, so batches of different local days can
    interleave.
    """
    start, end = day_bounds(day, candidate_days(settings, weekly))
    fingerprint = tuple(
        session.execute(
            select(func.count(), func.max(Paper.id), func.max(Paper.updated_at)).where(
                candidates_of(start, end)
            )
        ).one()
    )
    key = (settings.database_url, day, weekly)
    cached = _PREPARED.pop(key, None)  # put back last: the most recently used
    if cached is None or cached[0] != fingerprint:
        cached = None  # the stale one goes before its successor is built
        while len(_PREPARED) >= DAYS_KEPT:
            del _PREPARED[next(iter(_PREPARED))]
        with CLOCK("prepare"):
            cached = (fingerprint, prepare_day(session, settings, day, weekly))
    _PREPARED[key] = cached
    return cached[1]
