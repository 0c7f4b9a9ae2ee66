"""The simulated clients of the web load benchmark; `run.py` starts locust on this file.

Two kinds of client, as in production:

- a `Visitor` (a browser, with its own cookie jar): the live preview as it types, then the
  subscribe page and its form, posted with the CSRF token from the page;
- a `MailProvider` (no cookies): the RFC 8058 one-click POST to a digest's List-Unsubscribe
  link, and signed webhook events about bounces, complaints and unsubscribes.

Every answer other than the one a user should get is a failure; a 429 is reported under its
own message so the runner counts rate limiting apart from errors. The runner passes the signed
links and addresses in the file named by BENCH_WEB_TARGETS, and reads the final statistics
from the file named by BENCH_WEB_RESULTS.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path
from urllib.parse import urlsplit

from locust import HttpUser, between, constant, events, task
from locust.clients import ResponseContextManager
from locust.exception import CatchResponseError
from locust.stats import StatsEntry

from bench.web.payloads import (
    ONE_CLICK_FORM,
    RATE_LIMITED,
    WEBHOOK_EVENT_TYPES,
    Targets,
    csrf_token,
    generic_webhook,
    preview_query,
    subscribe_form,
    what_came_back,
)

LOOPBACK = {"127.0.0.1", "::1"}

TARGETS = Targets.load(Path(os.environ["BENCH_WEB_TARGETS"]))
THINK_SECONDS = float(os.environ.get("BENCH_WEB_THINK_SECONDS", "0"))
# One shared sequence per process: each one-click link is used once before any is used again.
_unsubscribe_paths = itertools.cycle(TARGETS.unsubscribe_paths)
_webhook_events = zip(itertools.cycle(TARGETS.webhook_addresses),
                      itertools.cycle(WEBHOOK_EVENT_TYPES), strict=False)


@events.init.add_listener
def refuse_other_hosts(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Traffic goes to loopback only: refuse any other host before a connection is made."""
    host = urlsplit(environment.host or "").hostname
    if host not in LOOPBACK:
        raise SystemExit(f"--host {environment.host!r} is not on loopback; use 127.0.0.1.")


@events.quitting.add_listener
def save_results(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """The final statistics, once every user has stopped: locust's CSV files are rewritten
    once a second, so they miss the requests of the run's last moments."""
    stats = environment.stats
    endpoints = sorted((_row(entry, entry.name) for entry in stats.entries.values()),
                       key=lambda row: str(row["name"]))
    errors = [
        {"name": e.name, "error": _message(e.error), "occurrences": e.occurrences}
        for e in stats.errors.values()
    ]
    Path(os.environ["BENCH_WEB_RESULTS"]).write_text(json.dumps(
        {"endpoints": [*endpoints, _row(stats.total, "Total")], "errors": errors}
    ))


def _row(entry: StatsEntry, name: str) -> dict[str, object]:
    return {
        "name": name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "per_second": entry.total_rps,
        "p50_ms": entry.get_response_time_percentile(0.5),
        "p99_ms": entry.get_response_time_percentile(0.99),
        "max_ms": entry.max_response_time,
    }


def _message(error: object) -> str:
    if isinstance(error, CatchResponseError):
        return str(error.args[0]) if error.args else "failure"
    return str(error) if isinstance(error, str) else repr(error)


def think_time():  # type: ignore[no-untyped-def]
    if THINK_SECONDS <= 0:
        return constant(0)
    return between(THINK_SECONDS * 0.5, THINK_SECONDS * 1.5)


def expect(response: ResponseContextManager, status: int) -> bool:
    """Mark the request a success only if it got `status`; say what it got otherwise."""
    if response.status_code == status:
        response.success()
        return True
    if response.status_code == 429:
        response.failure(RATE_LIMITED)
    elif not response.status_code:
        response.failure(f"no answer: {type(response.error).__name__}")
    else:
        response.failure(what_came_back(response.status_code, response.text or ""))
    return False


class Visitor(HttpUser):
    """Someone on the subscribe page: previews topics, then subscribes a new address."""

    weight = 3
    wait_time = think_time()

    def on_start(self) -> None:
        self.rng = random.Random()

    @task(3)
    def preview(self) -> None:
        with self.client.get("/preview", params=preview_query(self.rng), name="GET /preview",
                             catch_response=True) as response:
            expect(response, 200)

    @task(2)
    def subscribe(self) -> None:
        with self.client.get("/", name="GET /", catch_response=True) as page:
            if not expect(page, 200):
                return
            token = csrf_token(page.text)
            if token is None:
                page.failure("no CSRF token in the subscribe form")
                return
        with self.client.post("/subscribe", data=subscribe_form(token, self.rng),
                              name="POST /subscribe", catch_response=True) as response:
            expect(response, 200)


class MailProvider(HttpUser):
    """A mailbox provider or ESP: one-click unsubscribes and webhook events, no cookies."""

    weight = 2
    wait_time = think_time()

    @task
    def one_click_unsubscribe(self) -> None:
        # RFC 8058: the answer must not redirect, so a redirect is a failure, not followed.
        with self.client.post(next(_unsubscribe_paths), data=ONE_CLICK_FORM,
                              name="POST /unsubscribe/<token>", allow_redirects=False,
                              catch_response=True) as response:
            expect(response, 200)

    @task
    def webhook(self) -> None:
        address, event_type = next(_webhook_events)
        body, headers = generic_webhook(TARGETS.webhook_secret, address, event_type,
                                        int(time.time()))
        with self.client.post("/webhooks/generic", data=body, headers=headers,
                              name="POST /webhooks/generic", catch_response=True) as response:
            expect(response, 200)
