"""Ad-hoc recommendations: the papers some topics would have brought today.

The subscribe page's live preview calls this as the visitor types. It reuses the day's
prepared index (built once per process and day by the pipeline) and scores one throwaway
profile against it: the same ranking a subscriber's digest gets, without a subscriber.

When the day has no candidate papers (nothing ingested lately, or `digest recommend` on an
old archive), it ranks every paper in the database instead, with the same `DayIndex`, so the
answer is never empty merely because today is quiet. That index is cached per process until
the papers change.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import func, select

from . import db
from .cards import candidate_paper, paper_card
from .embeddings import day_semantic_index
from .models import Paper
from .prepare import prepared_day
from .render.content import PaperCard
from .render.filters import safe_url, shorten
from .score import DayIndex, Profile, RankingKnobs, build_day_index
from .settings import Settings

MAX_TOPICS_CHARS = 500
MAX_LIMIT = 10


MAX_ARCHIVE = 20_000


def recommend(
    settings: Settings,
    topics: str,
    limit: int = 5,
    day: date | None = None,
    *,
    max_limit: int = MAX_LIMIT,
) -> list[dict[str, Any]]:
    """Today's best papers for `topics`: [{title, url, score, why, paper_id}], best first.

    Ranks the day's candidates; on a day without any, every paper in the database.
    """
    topics = " ".join((topics or "").split())[:MAX_TOPICS_CHARS]
    if not topics.strip(" ,;"):
        return []
    limit = max(1, min(int(limit), max_limit))
    day = day or datetime.now(timezone.utc).date()
    with db.session_scope(settings) as session:
        prepared = prepared_day(session, settings, day)
        index, cards = prepared.index, prepared.cards
        if not len(index):
            index, cards = _archive_index(session, settings)
    selection = index.select([Profile(subscriber_id=0, topics=topics, limit=limit)])[0]
    results = []
    for pick in selection.picks:
        card = cards[pick.paper_id]
        results.append(
            {
                "title": shorten(card.title, 200),
                "url": safe_url(card.url) or None,
                "score": round(pick.score, 4),
                "why": " · ".join(pick.reasons),
                "paper_id": pick.paper_id,
            }
        )
    return results


_ARCHIVE: dict[str, tuple[tuple[object, ...], DayIndex, dict[int, PaperCard]]] = {}


def _archive_index(session: Any, settings: Settings) -> tuple[DayIndex, dict[int, PaperCard]]:
    """Every paper (the newest MAX_ARCHIVE) as one index; rebuilt only when papers change."""
    fingerprint = tuple(
        session.execute(select(func.count(), func.max(Paper.id), func.max(Paper.updated_at))).one()
    )
    cached = _ARCHIVE.get(settings.database_url)
    if cached is None or cached[0] != fingerprint:
        papers = list(session.scalars(select(Paper).order_by(Paper.id.desc()).limit(MAX_ARCHIVE)))
        index = build_day_index(
            [candidate_paper(p) for p in papers],
            [],
            datetime.now(timezone.utc),
            RankingKnobs.from_settings(settings),
            semantic=day_semantic_index(settings, papers),
        )
        cards = {p.id: paper_card(p) for p in papers}
        _ARCHIVE.clear()
        _ARCHIVE[settings.database_url] = (fingerprint, index, cards)
    _, index, cards = _ARCHIVE[settings.database_url]
    return index, cards
