"""The Celery app as `digest bench` runs its workers: `workers.app`'s, plus what the bench
measures inside each worker process, written to `DATA_DIR/worker-stats/<pid>.json` after
every task: the tasks run and the time inside them (the rest, between tasks, is Celery's:
acknowledging, fetching and decoding the next task), the database statements sent (the
sending thread's included), and the stage clock.

Run as `celery -A digest.tools.bench_worker worker ...`; the library never imports it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from time import perf_counter
from typing import Any

from celery.signals import task_postrun, task_prerun
from sqlalchemy import event
from sqlalchemy.engine import Engine

from workers.app import app

from ..clock import CLOCK

__all__ = ["app"]

_lock = threading.Lock()
_stats: dict[str, Any] = {"tasks": 0, "in_tasks": 0.0, "first": None, "last": None,
                          "statements": 0}
_started: dict[str, float] = {}


@event.listens_for(Engine, "before_cursor_execute")
def _count_statement(*_: object) -> None:
    with _lock:
        _stats["statements"] += 1


@task_prerun.connect
def _task_starts(task_id: str = "", **_: object) -> None:
    now = perf_counter()
    _started[task_id] = now
    if _stats["first"] is None:
        _stats["first"] = now


@task_postrun.connect
def _task_ends(task_id: str = "", **_: object) -> None:
    now = perf_counter()
    with _lock:
        _stats["in_tasks"] += now - _started.pop(task_id, now)
        _stats["tasks"] += 1
        _stats["last"] = now
        stats = {**_stats, "clock": dict(CLOCK.seconds), "items": dict(CLOCK.items)}
    folder = Path(app.conf.digest_settings.data_dir) / "worker-stats"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    path.with_suffix(".tmp").write_text(json.dumps(stats))
    path.with_suffix(".tmp").replace(path)

