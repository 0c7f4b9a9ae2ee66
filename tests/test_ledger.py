"""The delivery ledger at the size of a real day: batch statements find their rows by index."""

from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import insert, text

from digest import db, ledger
from digest.models import Subscriber
from digest.settings import Settings

DAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 7, tzinfo=timezone.utc)


def test_a_big_planned_day_keeps_batch_statements_on_the_subscriber_index(
    sqlite_settings: Settings,
) -> None:
    """Without statistics SQLite scanned the whole day's rows in every batch statement."""
    n = ledger.ANALYZE_AFTER_PLANNING + 200
    with db.session_scope(sqlite_settings) as s:
        s.execute(insert(Subscriber), [{"email": f"r{i}@example.org", "status": "active",
                                        "time_zone": "UTC", "send_hour": 7,
                                        "papers_per_digest": 5, "paused": False} for i in range(n)])
        pairs = [(sid, DAY) for sid in range(1, n + 1)]
        planned = ledger.plan(s, pairs, {p: f"<{p[0]}@x>" for p in pairs}, NOW, 600)
        assert len(planned) == n
        plan = s.execute(text(
            "EXPLAIN QUERY PLAN UPDATE deliveries SET status = 'sending' "
            "WHERE digest_date = :day AND claim_token = 't' AND subscriber_id IN (1, 2, 3) "
            "AND status = 'claimed'"), {"day": DAY.isoformat()}).all()
    assert "subscriber_id=?" in str(plan), plan
