"""The fork pool: what its run processes report adds up in the parent; SQLite writers take turns."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

from sqlalchemy.orm import Session

from digest.clock import CLOCK
from digest.pool import run_in_processes
from digest.settings import Settings
from digest.status import DayReport


def test_each_process_stage_seconds_add_up_in_the_parent(settings: Settings) -> None:
    """Two processes each spend about 0.2 s per batch in a stage: the parent's clock holds
    the sum over both (process-seconds), not the figure of whichever finished last."""

    def run(_session: Session, batches: Iterator[Sequence[int]], _progress: object
            ) -> tuple[DayReport, dict[str, int]]:
        for batch in batches:
            with CLOCK("work", len(batch)):
                time.sleep(0.2)
        return DayReport(day=date(2025, 1, 6)), {}

    CLOCK.reset()
    _, _, errors = run_in_processes(settings, date(2025, 1, 6), run,
                                    [[1, 2], [3, 4], [5, 6], [7, 8]], jobs=2)
    assert errors == []
    assert CLOCK.items["work"] == 8
    assert CLOCK.seconds["work"] >= 0.75  # four batches of 0.2 s, whichever process ran them
    CLOCK.reset()


def test_the_clock_adds_another_process_figures() -> None:
    CLOCK.reset()
    with CLOCK("render", 3):
        pass
    CLOCK.add({"render": 1.5, "send": 2.0}, {"render": 2, "send": 4})
    CLOCK.add({"render": 0.5}, {"render": 1})
    assert CLOCK.seconds["render"] >= 2.0 and CLOCK.seconds["send"] == 2.0
    assert CLOCK.items == {"render": 6, "send": 4}
    CLOCK.reset()


def test_sqlite_writers_take_turns_from_their_first_write_to_the_connections_return(
    tmp_path: Path,
) -> None:
    """Run processes sharing a SQLite file queue on a lock for their write transactions
    rather than sleeping in SQLite's busy handler: a write takes the lock, a read does not,
    and it is given back once the transaction is over and its connection returned."""
    import multiprocessing

    from sqlalchemy import text

    from digest import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'turns.sqlite3'}")
    lock = multiprocessing.get_context("fork").Lock()
    db.take_turns_writing(engine, lock)

    def free() -> bool:
        if lock.acquire(block=False):
            lock.release()
            return True
        return False

    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.commit()
        conn.execute(text("SELECT count(*) FROM t"))
        assert free()
        conn.execute(text("INSERT INTO t VALUES (1)"))
        assert not free()
        conn.execute(text("UPDATE t SET x = 2"))  # the same transaction: the same turn
        conn.commit()
    assert free()
    with engine.connect() as conn:
        conn.execute(text("  delete FROM t"))
        assert not free()
        conn.rollback()
    assert free()


def test_processes_taking_turns_write_every_row(tmp_path: Path) -> None:
    import multiprocessing

    from sqlalchemy import text

    from digest import db

    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    with db.make_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE t (who INTEGER, n INTEGER)"))
    context = multiprocessing.get_context("fork")
    lock = context.Lock()

    def writer(who: int) -> None:
        engine = db.make_engine(url)
        db.take_turns_writing(engine, lock)
        for n in range(200):
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (:who, :n)"), {"who": who, "n": n})

    children = [context.Process(target=writer, args=(k,)) for k in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0]
    with db.make_engine(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 400
    assert lock.acquire(block=False)  # both gave it back
