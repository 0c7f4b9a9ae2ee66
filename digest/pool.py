"""The same day on every core: the planned batches shared by forked run processes.

`digest run` prepares the day once, here, then forks RUN_JOBS processes that inherit it and
take batches one by one from a shared counter, each over its own database connection and
mail session. The ledger makes this safe as it makes the Celery workers safe: each batch is
claimed before it is sent, so a process that dies leaves its unsent rows claimed until their
lease ends, for the next run to take up.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar, cast

from sqlalchemy.orm import Session

from . import db
from .clock import CLOCK
from .settings import Settings
from .status import DayReport

Progress = Callable[[int], None]
Row = TypeVar("Row")
# Runs the batches it is given over one session and mail session: the report, and the
# outbox index rows of what the file backend wrote, by file.
BatchRunner = Callable[
    [Session, Iterator[Sequence[int]], Progress], tuple[DayReport, dict[str, Row]]
]

MIN_BATCHES_PER_JOB = 5  # below this, forking a process costs more than it saves


def run_jobs(settings: Settings, batches: int) -> int:
    """How many processes share the day's batches: RUN_JOBS, or one per core if it is 0;
    fewer on a small day, and one (this process) for the newcomer's demo."""
    if multiprocessing.current_process().daemon:
        return 1  # a daemonic process (a Celery pool worker) may not fork children
    wanted = settings.run_jobs or os.cpu_count() or 1
    return max(1, min(wanted, batches // MIN_BATCHES_PER_JOB))


def run_in_processes(
    settings: Settings,
    day: date,
    run: BatchRunner[Row],
    batches: Sequence[Sequence[int]],
    jobs: int,
    progress: Progress | None = None,
) -> tuple[DayReport, dict[str, Row], list[str]]:
    """`run` the batches from `jobs` forked processes, which inherit what it holds (the
    prepared day). Returns what the processes' runs returned, merged, and the errors of
    processes that failed."""
    context = multiprocessing.get_context("fork")
    gc.freeze()  # the inherited day stays shared: no collection in a child touches its pages
    taken = context.Value("q", 0)  # the next batch to take: whoever is free takes it
    writes = context.Lock()  # SQLite: one writer at a time, taking turns without sleeping
    children: list[tuple[Any, Connection]] = []
    try:
        for k in range(jobs):
            ours, theirs = context.Pipe(duplex=False)
            child = context.Process(
                target=_run_share, args=(settings, run, batches, taken, theirs, writes),
                name=f"digest-run-{k + 1}", daemon=True,
            )
            child.start()
            theirs.close()
            children.append((child, ours))
        return _gather(children, day, progress)
    finally:
        for child, _ in children:
            child.join()
        gc.unfreeze()


def _gather(
    children: Sequence[tuple[Any, Connection]], day: date, progress: Progress | None,
) -> tuple[DayReport, dict[str, Any], list[str]]:
    """Read the children's progress and results until each has finished or died."""
    report = DayReport(day=day)
    rows: dict[str, Any] = {}
    errors: list[str] = []
    waiting: dict[Connection, Any] = {conn: child for child, conn in children}
    while waiting:
        for ready in wait(list(waiting)):
            conn = cast(Connection, ready)
            try:
                message: tuple[Any, ...] = conn.recv()
            except EOFError:
                child = waiting.pop(conn)
                child.join()
                errors.append(f"{child.name} stopped (exit code {child.exitcode}) before "
                              "reporting")
                continue
            kind, payload = message[0], message[1:]
            if kind == "progress" and progress:
                progress(payload[0])
            elif kind == "done":
                share, share_rows, seconds, items = payload
                report.merge(share)
                rows.update(share_rows)
                CLOCK.add(seconds, items)
                waiting.pop(conn)
            elif kind == "error":
                errors.append(payload[0])
                waiting.pop(conn)
    return report, rows, errors


def _run_share(
    settings: Settings, run: BatchRunner[Any], batches: Sequence[Sequence[int]], taken: Any,
    conn: Connection, writes: Any = None,
) -> None:
    """A forked child of `run_in_processes`: batches taken one by one from the shared counter
    until none is left (no process idles while another has a backlog), reported back."""
    engine = db.engine_for(settings.database_url)
    engine.dispose(close=False)  # the parent's connections
    if writes is not None and engine.dialect.name == "sqlite":
        db.take_turns_writing(engine, writes)
    CLOCK.reset()
    try:
        with db.session_scope(settings) as session:
            report, rows = run(session, _take(batches, taken),
                               lambda n: conn.send(("progress", n)))
        conn.send(("done", report, rows, dict(CLOCK.seconds), dict(CLOCK.items)))
    except BaseException:  # noqa: BLE001 - the parent reports it; this process ends here
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _take(batches: Sequence[Sequence[int]], taken: Any) -> Iterator[Sequence[int]]:
    """The next batch no process has taken yet, until none is left."""
    while True:
        with taken.get_lock():
            index = taken.value
            taken.value += 1
        if index >= len(batches):
            return
        yield batches[index]
