"""bench/web: the requests the load benchmark sends are the ones the app accepts, its gunicorn
is the production unit's, and its report counts 429s apart from errors.

The benchmark itself is not run here (it is `make bench-web`); these check its parts against
the real app, so a change of token format or signing scheme shows up as a failing test
rather than as a benchmark full of 4xx.
"""

from __future__ import annotations

import json
import random
import re
import runpy
import shlex
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from bench.web import gunicorn_probe
from bench.web.payloads import (
    ONE_CLICK_FORM,
    RATE_LIMITED,
    csrf_token,
    generic_webhook,
    preview_query,
    subscribe_form,
    what_came_back,
)
from bench.web.run import (
    MEASURED_ENDPOINTS,
    WEB_UNIT,
    ProbeReport,
    config_index,
    format_table,
    last_traceback,
    probed,
    production_command,
    read_results,
    seed,
)
from digest import db
from digest.models import Subscriber, SubscriberStatus, Suppression
from digest.settings import Settings
from digest.web import create_app

from .smtp_server import SMTPServer

BENCH_WEB = Path(__file__).resolve().parents[1] / "bench" / "web"
LOCUSTFILE = BENCH_WEB / "locustfile.py"
PROBE = BENCH_WEB / "gunicorn_probe.py"


def test_gunicorn_runs_as_the_production_unit_says_on_loopback() -> None:
    unit_line = next(line for line in WEB_UNIT.read_text().splitlines()
                     if line.startswith("ExecStart="))
    production = shlex.split(unit_line.removeprefix("ExecStart="))
    command = production_command(8123)
    assert command[command.index("--bind") + 1] == "127.0.0.1:8123"
    changed = {0, production.index("--bind") + 1, config_index(production)}
    unchanged = [i for i in range(len(production)) if i not in changed]
    assert [command[i] for i in unchanged] == [production[i] for i in unchanged]
    assert Path(command[0]).name == "gunicorn" and Path(command[0]).exists()
    if (at := config_index(command)) is not None:
        assert Path(command[at]).is_file()


def test_the_probe_takes_the_place_of_the_production_config_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = "digest.web:create_app()"
    without, env = probed(["gunicorn", "--workers", "3", app])
    assert without[-3:] == ["--config", str(PROBE), app] and env == {}
    production = tmp_path / "gunicorn.conf.py"
    production.write_text(
        "from pathlib import Path\n"
        "timeout = 45\n"
        "def worker_exit(server, worker):\n"
        f"    Path({str(tmp_path)!r}, 'production-hook-ran').touch()\n"
    )
    command, env = probed(["gunicorn", "--config", str(production), "--workers", "3", app])
    assert command == ["gunicorn", "--config", str(PROBE), "--workers", "3", app]
    assert env == {"BENCH_WEB_BASE_CONFIG": str(production)}

    monkeypatch.setenv("BENCH_WEB_BASE_CONFIG", str(production))
    monkeypatch.setenv("BENCH_WEB_PROBE_DIR", str(tmp_path))
    config = runpy.run_path(str(PROBE))  # as gunicorn reads it
    assert config["timeout"] == 45
    config["worker_exit"](None, None)
    assert (tmp_path / "production-hook-ran").exists()
    config["write_report"]()
    assert list(tmp_path.glob("worker-*.json"))


def test_one_click_links_and_webhooks_the_bench_sends_are_accepted(
    sqlite_settings: Settings,
) -> None:
    settings = replace(sqlite_settings, webhook_secret="bench-webhook-secret")
    targets = seed(settings, 4)
    assert len(targets.unsubscribe_paths) == 2 and len(targets.webhook_addresses) == 2
    client = create_app(settings).test_client()

    answer = client.post(targets.unsubscribe_paths[0], data=ONE_CLICK_FORM)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body, headers = generic_webhook(targets.webhook_secret, targets.webhook_addresses[0],
                                    "bounce", int(time.time()))
    answer = client.post("/webhooks/generic", data=body, headers=headers)
    assert answer.status_code == 200 and answer.get_json()["applied"] == 1

    with db.session_scope(settings) as s:
        statuses = {sub.email: sub.status for sub in s.scalars(select(Subscriber))}
        suppressed = set(s.scalars(select(Suppression.address)))
    assert list(statuses.values()).count(SubscriberStatus.UNSUBSCRIBED) == 1
    assert suppressed == {targets.webhook_addresses[0]}


def test_the_visitor_flow_subscribes_and_gets_its_confirmation(
    sqlite_settings: Settings, smtp_server: SMTPServer, redis_url: str,
) -> None:
    settings = replace(sqlite_settings, mail_backend="smtp", smtp_host="127.0.0.1",
                       smtp_port=smtp_server.port, redis_url=redis_url)
    client = create_app(settings).test_client()
    rng = random.Random(3)

    assert client.get("/preview", query_string=preview_query(rng)).status_code == 200
    token = csrf_token(client.get("/").get_data(as_text=True))
    assert token
    form = subscribe_form(token, rng)
    answer = client.post("/subscribe", data=form)

    assert answer.status_code == 200, answer.get_data(as_text=True)
    deadline = time.monotonic() + 10  # the email may go out after the answer
    while not smtp_server.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m["To"] for m in smtp_server.messages] == [form["email"]]


def test_the_probe_names_requests_as_the_clients_do() -> None:
    names = set(re.findall(r'name="([A-Z]+ /[^"]*)"', LOCUSTFILE.read_text()))
    assert names == set(MEASURED_ENDPOINTS)
    assert gunicorn_probe.endpoint("POST", "/unsubscribe/abc.def") == "POST /unsubscribe/<token>"
    assert gunicorn_probe.endpoint("POST", "/webhooks/generic") == "POST /webhooks/generic"
    assert gunicorn_probe.endpoint("GET", "/") == "GET /"


def test_the_report_counts_rate_limited_requests_apart_from_errors(tmp_path: Path) -> None:
    saved = tmp_path / "results.json"
    row = {"failures": 0, "p50_ms": 0, "p99_ms": 0, "max_ms": 0}
    saved.write_text(json.dumps({
        "endpoints": [
            {**row, "name": "GET /preview", "requests": 50, "per_second": 5.0},
            {**row, "name": "POST /subscribe", "requests": 100, "failures": 7, "per_second": 10.0,
             "p50_ms": 120, "p99_ms": 800, "max_ms": 900},
            {**row, "name": "Total", "requests": 150, "failures": 7, "per_second": 15.0,
             "p50_ms": 90, "p99_ms": 700, "max_ms": 900},
        ],
        "errors": [
            {"name": "POST /subscribe", "error": RATE_LIMITED, "occurrences": 5},
            {"name": "POST /subscribe", "occurrences": 2, "error": what_came_back(
                503, "<!doctype html><title>We could not send the email</title>")},
        ],
    }))
    results = {r.name: r for r in read_results(saved)}

    assert (results["POST /subscribe"].rate_limited, results["POST /subscribe"].errors) == (5, 2)
    assert (results["Total"].rate_limited, results["Total"].errors) == (5, 2)
    assert results["GET /preview"].errors == 0
    assert results["Total"].error_kinds == {"HTTP 503: We could not send the email": 2}
    probe = ProbeReport(service_ms={"POST /subscribe": [10.0, 30.0], "GET /preview": [2.0]})
    table = format_table(list(results.values()), probe).splitlines()
    assert table[0].split()[:3] == ["endpoint", "requests", "req/s"]
    assert table[-1].split() == ["Total", "150", "15.0", "90", "700", "900", "10", "30", "5",
                                 "2"]


def test_a_failed_run_shows_the_cause_from_gunicorns_log(tmp_path: Path) -> None:
    log = tmp_path / "gunicorn.log"
    log.write_text(
        '127.0.0.1 - - [x] "GET / HTTP/1.1" 200 10 "-" "python-requests"\n'
        "Traceback (most recent call last):\n"
        '  File "digest/notices.py", line 65, in notice_context\n'
        "    unsubscribe_url = link(settings, Purpose.UNSUBSCRIBE, subscriber_id)\n"
        "AttributeError: 'int' object has no attribute 'id'\n"
        '127.0.0.1 - - [x] "POST /subscribe HTTP/1.1" 500 1289 "-" "python-requests"\n'
    )
    shown = last_traceback(log).splitlines()
    assert shown[0].startswith("Traceback") and shown[-1].startswith("AttributeError")
    quiet = tmp_path / "quiet.log"
    quiet.write_text('127.0.0.1 - - [x] "GET / HTTP/1.1" 200 10 "-" "python-requests"\n')
    assert last_traceback(quiet) == ""
