"""A gunicorn config file of hooks only (no setting of its own): it leaves the production
command's settings as they are, times each request inside the worker, and watches one rule.

gunicorn reads one config file. If the production command names one, the runner passes its
path in BENCH_WEB_BASE_CONFIG and this file takes everything from it (its settings and
hooks), and runs its own `post_worker_init` after the production one, if there is one.

The rule: nothing waits on SMTP while it holds a database connection. A connection held
across the wait is one the pool cannot lend to anyone else for as long as the mail server
takes; under load the pool runs dry and every request queues behind the slowest relay.

SQLAlchemy's pool events count, per thread, the connections checked out; every SMTP reply
the worker waits for (`smtplib.SMTP.getreply`, which also reads the greeting) is timed,
under the request's route or, outside a request, the thread's name (a background sender),
and if that thread holds a connection then, recorded as a violation.
Each request's time in the app (from the WSGI call to its answer, without the wait in
gunicorn's queue) is kept per endpoint, so a slow endpoint can be told from a long queue.
Each worker writes what it saw as JSON into BENCH_WEB_PROBE_DIR as its process exits (at
exit, after anything the app itself still finishes then, such as queued emails).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_BASE_CONFIG = os.environ.get("BENCH_WEB_BASE_CONFIG")
_base: dict[str, Any] = runpy.run_path(_BASE_CONFIG) if _BASE_CONFIG else {}
# Its public names are gunicorn settings and hooks (gunicorn ignores any other name).
globals().update({k: v for k, v in _base.items()
                  if not k.startswith("_") and k != "post_worker_init"})

_held = threading.local()
_totals: dict[str, Any] = {"smtp_waits": 0, "smtp_wait_seconds": 0.0, "held_waits": 0,
                           "held_wait_seconds": 0.0}
_held_paths: Counter[str] = Counter()
_smtp_waits_by: Counter[str] = Counter()  # route, or thread name outside a request
_lock = threading.Lock()  # a background sender thread counts too
_service_ms: dict[str, list[float]] = {}
TOKEN_ROUTES = ("unsubscribe", "confirm", "preferences", "feedback")


def _connections_held() -> int:
    return getattr(_held, "count", 0)


def _on_checkout(*_args: object) -> None:
    _held.count = _connections_held() + 1


def _on_checkin(*_args: object) -> None:
    _held.count = max(0, _connections_held() - 1)


def _waiting_for() -> str:
    """Who waits: "POST /subscribe", or "thread signup-emails" outside a request."""
    from flask import has_request_context, request

    if has_request_context():
        return endpoint(request.method, request.path)
    return f"thread {threading.current_thread().name}"


def _timed_getreply(original: Any) -> Any:
    def getreply(self: smtplib.SMTP) -> Any:
        held = _connections_held()
        started = time.perf_counter()
        try:
            return original(self)
        finally:
            waited = time.perf_counter() - started
            who = _waiting_for()
            with _lock:
                _totals["smtp_waits"] += 1
                _totals["smtp_wait_seconds"] += waited
                _smtp_waits_by[who] += 1
                if held:
                    _totals["held_waits"] += 1
                    _totals["held_wait_seconds"] += waited
                    _held_paths[who] += 1

    return getreply


def endpoint(method: str, path: str) -> str:
    """"POST /unsubscribe/<token>": the request's route, with the token left out."""
    parts = path.split("/")
    if len(parts) > 2 and parts[1] in TOKEN_ROUTES:
        parts[2] = "<token>"
    return f"{method} {'/'.join(parts)}"


def _timed_app(app: Any) -> Any:
    def timed(environ: dict[str, Any], start_response: Any) -> Any:
        started = time.perf_counter()
        try:
            return app(environ, start_response)
        finally:
            key = endpoint(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
            if environ.get("HTTP_X_BENCH_WARM_UP"):
                key = f"warm-up {key}"
            _service_ms.setdefault(key, []).append((time.perf_counter() - started) * 1000)

    return timed


def post_worker_init(worker: Any) -> None:
    if "post_worker_init" in _base:
        _base["post_worker_init"](worker)
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    event.listen(Pool, "checkout", _on_checkout)
    event.listen(Pool, "checkin", _on_checkin)
    smtplib.SMTP.getreply = _timed_getreply(smtplib.SMTP.getreply)  # type: ignore[method-assign]
    worker.wsgi = _timed_app(worker.wsgi)
    # Registered before anything the app registers, so it runs after them (atexit is LIFO).
    atexit.register(write_report)


def write_report() -> None:
    folder = os.environ.get("BENCH_WEB_PROBE_DIR")
    if not folder:
        return
    with _lock:
        report = {**_totals, "held_paths": dict(_held_paths),
                  "smtp_waits_by": dict(_smtp_waits_by), "service_ms": _service_ms}
    Path(folder, f"worker-{os.getpid()}.json").write_text(json.dumps(report))
