"""Prometheus metrics: the counters move when a real day runs (both databases, a real SMTP
server), /metrics is private, many processes are summed (subprocesses, real gunicorn, a real
Celery worker), and the alert rules and dashboard name only metrics that exist."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from digest import metrics
from digest.ingest import ingest
from digest.journal import resolve_abandoned
from digest.pipeline import run_day
from digest.settings import PROJECT_DIR, Settings, SettingsError, setting_names
from digest.web import create_app
from digest.webhooks import Generic

from .factories import make_subscriber
from .smtp_server import SMTPServer
from .test_journal import NOW, dead_attempt
from .test_pipeline import DAY, seed_papers
from .test_workers import (  # noqa: F401 - broker_db, pg_settings: the worker test's fixtures
    Cluster,
    broker_db,
    pg_settings,
    seed,
    settled,
    wait_for,
)

TOKEN = "a-metrics-token-of-32-characters"
PROMETHEUS_DIR = PROJECT_DIR / "deploy" / "prometheus"


def value(name: str, **labels: str) -> float:
    """A sample of this process's registry (tests run in single-process mode)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape parsed as Prometheus reads it: (sample name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_settings(settings: Settings, smtp_server: SMTPServer) -> Settings:
    return replace(settings, mail_backend="smtp", smtp_host="127.0.0.1",
                   smtp_port=smtp_server.port, min_relevance=0.05)


# --- a real day ------------------------------------------------------------------------------


def test_a_real_day_moves_the_digest_and_smtp_counters(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    for email in ("ada@example.org", "grace@example.org", "bounce@example.org"):
        make_subscriber(session, email=email, topics="LoRA, low-rank adaptation")
    make_subscriber(session, email="nobody@example.org", topics="medieval poetry")
    session.commit()
    smtp_server.reject_recipients.add("bounce@example.org")
    names = [("paper_digest_digests_planned_total", {}),
             *[("paper_digest_digests_total", {"outcome": o}) for o in metrics.DIGEST_OUTCOMES],
             ("paper_digest_smtp_transaction_duration_seconds_count", {}),
             ("paper_digest_smtp_errors_total", {"kind": "permanent"}),
             ("paper_digest_batch_duration_seconds_count", {})]
    before = [value(name, **labels) for name, labels in names]

    report = run_day(smtp_settings, DAY)

    moved = {f"{name}{labels or ''}": value(name, **labels) - was
             for (name, labels), was in zip(names, before, strict=True)}
    assert sorted(report.sent) == ["ada@example.org", "grace@example.org"]
    assert moved == {
        "paper_digest_digests_planned_total": 4,
        "paper_digest_digests_total{'outcome': 'sent'}": 2,
        "paper_digest_digests_total{'outcome': 'bounced'}": 1,
        "paper_digest_digests_total{'outcome': 'failed'}": 0,
        "paper_digest_digests_total{'outcome': 'retrying'}": 0,
        "paper_digest_digests_total{'outcome': 'in_doubt'}": 0,
        "paper_digest_digests_total{'outcome': 'skipped'}": 1,
        "paper_digest_smtp_transaction_duration_seconds_count": 3,
        "paper_digest_smtp_errors_total{'kind': 'permanent'}": 1,
        "paper_digest_batch_duration_seconds_count": 1,
    }
    # A rerun plans and sends nothing: nothing moves.
    again = [value(name, **labels) for name, labels in names]
    run_day(smtp_settings, DAY)
    assert [value(name, **labels) for name, labels in names] == again


def test_a_message_without_an_answer_counts_in_doubt(
    session: Session, smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    seed_papers(session)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()
    smtp_server.drop_next_data = 1  # the server queues the message, then hangs up
    in_doubt = value("paper_digest_digests_total", outcome="in_doubt")
    smtp_in_doubt = value("paper_digest_smtp_errors_total", kind="in_doubt")
    run_day(smtp_settings, DAY)
    assert value("paper_digest_digests_total", outcome="in_doubt") == in_doubt + 1
    assert value("paper_digest_smtp_errors_total", kind="in_doubt") == smtp_in_doubt + 1


def test_an_unreachable_smtp_server_counts_a_connect_error(
    session: Session, smtp_settings: Settings
) -> None:
    seed_papers(session)
    make_subscriber(session, email="ada@example.org", topics="LoRA")
    session.commit()
    closed = replace(smtp_settings, smtp_port=free_port(), smtp_retry_attempts=1)
    connect = value("paper_digest_smtp_errors_total", kind="connect")
    retrying = value("paper_digest_digests_total", outcome="retrying")
    run_day(closed, DAY)
    assert value("paper_digest_smtp_errors_total", kind="connect") > connect
    assert value("paper_digest_digests_total", outcome="retrying") == retrying + 1


def test_rows_a_dead_worker_left_in_flight_count_in_doubt(
    session: Session, smtp_settings: Settings
) -> None:
    seed_papers(session)
    dead_attempt(session, smtp_settings, ["inflight@example.org"])  # no journal on this host
    in_doubt = value("paper_digest_digests_total", outcome="in_doubt")
    recovery = resolve_abandoned(session, smtp_settings, NOW + timedelta(hours=1))
    assert recovery.in_doubt == 1
    assert value("paper_digest_digests_total", outcome="in_doubt") == in_doubt + 1


def test_ingest_counts_records_per_source_and_failed_sources(
    sqlite_settings: Settings, shared_dir: Path, tmp_path: Path
) -> None:
    from digest import db

    page = sorted((shared_dir / "seeds").glob("*.txt"))[0]
    unreadable = tmp_path / "missing.txt"
    inserted = value("paper_digest_ingest_records_total", source="page", host="file",
                     result="inserted")
    failed = value("paper_digest_ingest_source_failures_total", host="file")
    with db.session_scope(sqlite_settings) as session:
        report = ingest(session, [str(page), str(unreadable)], fmt="page")
    assert report.inserted > 0 and len(report.errors) == 1
    assert value("paper_digest_ingest_records_total", source="page", host="file",
                 result="inserted") == inserted + report.inserted
    assert value("paper_digest_ingest_source_failures_total", host="file") == failed + 1
    assert value("paper_digest_ingest_last_success_timestamp_seconds", host="file") \
        >= time.time() - 60


@pytest.mark.parametrize("origin, host", [
    ("https://Export.arXiv.org/api/query?search_query=cat:cs.LG&max_results=5",
     "export.arxiv.org"),
    ("http://user:secret@feeds.example.org:8080/daily.json", "feeds.example.org"),
    ("inputs/seeds/2026-07-01.txt", "file"),
])
def test_a_source_is_labelled_by_its_host_only(origin: str, host: str) -> None:
    assert metrics.source_host(origin) == host


# --- the web app: /metrics, requests, webhooks -----------------------------------------------


@pytest.fixture
def metered(sqlite_settings: Settings) -> Iterator[FlaskClient]:
    settings = replace(sqlite_settings, metrics_token=TOKEN, webhook_secret="w" * 32)
    with create_app(settings).test_client() as client:
        yield client


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=")
    return scraped(response.get_data(as_text=True))


def test_metrics_are_off_without_a_token(sqlite_settings: Settings) -> None:
    client = create_app(sqlite_settings).test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404


@pytest.mark.parametrize("authorization", [
    None, "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN,
    "Bearer é-not-ascii",
])
def test_a_wrong_token_gets_401(metered: FlaskClient, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = metered.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "paper_digest" not in response.get_data(as_text=True)


def test_the_right_token_lists_requests_by_route_rule_never_by_path(
    metered: FlaskClient,
) -> None:
    before = scrape(metered)
    key = ("paper_digest_http_requests_total",
           (("method", "GET"), ("route", "/healthz"), ("status", "200")))
    for _ in range(3):
        assert metered.get("/healthz").status_code == 200
    secret_link = "/unsubscribe/this-token-must-never-reach-prometheus"
    metered.get(secret_link)
    metered.get("/no-such-page")

    after = scrape(metered)
    assert after[key] - before.get(key, 0) == 3
    routes = {dict(labels).get("route") for (name, labels) in after
              if name == "paper_digest_http_requests_total"}
    assert {"/healthz", "/metrics", "/unsubscribe/<token>", "unmatched"} <= routes
    body = metered.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(True)
    assert "this-token-must-never-reach-prometheus" not in body and "no-such-page" not in body
    assert ("paper_digest_http_request_duration_seconds_count",
            (("method", "GET"), ("route", "/healthz"))) in after


def test_webhook_events_and_refused_requests_are_counted_by_provider(
    metered: FlaskClient,
) -> None:
    before = scrape(metered)
    body = json.dumps({"events": [
        {"id": "e1", "type": "bounce", "email": "gone@example.org", "permanent": True},
        {"id": "e2", "type": "bounce", "email": "soft@example.org", "permanent": False},
    ]}).encode()
    stamp = int(time.time())
    signed = {"X-Digest-Timestamp": str(stamp),
              "X-Digest-Signature": Generic.sign("w" * 32, stamp, body)}
    assert metered.post("/webhooks/generic", data=body, headers=signed).status_code == 200
    assert metered.post("/webhooks/generic", data=body).status_code == 401
    forged = {**signed, "X-Digest-Signature": Generic.sign("x" * 32, stamp, body)}
    assert metered.post("/webhooks/generic", data=body, headers=forged).status_code == 403

    after = scrape(metered)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    events = "paper_digest_webhook_events_total"
    rejected = "paper_digest_webhook_requests_rejected_total"
    assert moved(events, provider="generic", outcome="applied") == 1
    assert moved(events, provider="generic", outcome="ignored") == 1
    assert moved(rejected, provider="generic", reason="unauthorized") == 1
    assert moved(rejected, provider="generic", reason="forbidden") == 1


def test_a_short_metrics_token_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="METRICS_TOKEN is too short"):
        Settings.from_env({"METRICS_TOKEN": "changeme"}, env_file=None)
    with pytest.raises(SettingsError, match="METRICS_PORT"):
        Settings.from_env({"METRICS_PORT": "70000"}, env_file=None)


# --- several processes -----------------------------------------------------------------------


def run_python(code: str, multiproc_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in setting_names()}
    env[metrics.MULTIPROC_ENV] = str(multiproc_dir)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_multiprocess_mode_sums_the_counts_of_every_process(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"  # made by the first process that needs it
    count = """
        from digest import metrics
        metrics.count_digests(sent={n})
        metrics.BATCH_SECONDS.observe(1.5)
    """
    run_python(count.format(n=3), folder)
    run_python(count.format(n=4), folder)
    read = """
        from digest import metrics
        body, _ = metrics.exposition()
        print(body.decode())
    """
    summed = scraped(run_python(read, folder))
    assert summed[("paper_digest_digests_total", (("outcome", "sent"),))] == 7
    assert summed[("paper_digest_batch_duration_seconds_count", ())] == 2
    assert summed[("paper_digest_digests_total", (("outcome", "bounced"),))] == 0

    # A new run of the service starts from nothing.
    run_python("from digest import metrics; metrics.wipe_multiprocess_dir()", folder)
    assert list(folder.glob("*.db")) == []
    fresh = scraped(run_python(read, folder))
    assert fresh[("paper_digest_digests_total", (("outcome", "sent"),))] == 0


def test_a_prefork_worker_exporter_needs_multiprocess_mode(sqlite_settings: Settings) -> None:
    assert metrics.multiprocess_dir() is None  # the test process counts on its own
    off = replace(sqlite_settings, metrics_port=0)
    assert metrics.serve_worker_metrics(off, prefork=True) is False
    with pytest.raises(SettingsError, match="PROMETHEUS_MULTIPROC_DIR"):
        metrics.serve_worker_metrics(replace(off, metrics_port=free_port()), prefork=True)


def get(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.slow
def test_gunicorn_workers_are_summed_at_metrics(tmp_path: Path) -> None:
    """The production command's config file: two workers, one /metrics for both."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in setting_names() and k != metrics.MULTIPROC_ENV}
    env.update(DATA_DIR=str(tmp_path / "data"), METRICS_TOKEN=TOKEN)
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"),
         "--config", str(PROJECT_DIR / "deploy" / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{port}", "--workers", "2", "digest.web:create_app()"],
        cwd=tmp_path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    key = ("paper_digest_http_requests_total",
           (("method", "GET"), ("route", "/healthz"), ("status", "200")))

    def healthz_count() -> float:
        status, body = get(f"{base}/metrics", TOKEN, timeout=25)
        assert status == 200, body
        return scraped(body).get(key, 0)

    try:
        wait_for(lambda: get(f"{base}/healthz", timeout=25)[0] == 200 or server.poll() is not None,
                 60, "gunicorn to answer")
        assert server.poll() is None, log.read_text()[-3000:]
        before = healthz_count()
        # A sync worker that accepted this connection waits for its request: meanwhile the
        # other worker answers everything else (once it has booted), so each worker counts
        # some requests.
        with socket.create_connection(("127.0.0.1", port), timeout=25) as held:
            time.sleep(0.5)
            for _ in range(9):
                assert get(f"{base}/healthz", timeout=25)[0] == 200
            held.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            assert held.recv(100).startswith(b"HTTP/1.0 200")
        assert healthz_count() - before == 10, log.read_text()[-3000:]
        body = get(f"{base}/metrics", TOKEN)[1]
        assert scraped(body)[("paper_digest_digests_total", (("outcome", "sent"),))] == 0
        assert get(f"{base}/metrics", "wrong-token-wrong-token")[0] == 401
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_prefork_worker_exports_what_its_pool_processes_counted(
    request: pytest.FixtureRequest, tmp_path: Path, smtp_server: SMTPServer
) -> None:
    port = free_port()
    folder = tmp_path / "worker-metrics"

    class MeteredCluster(Cluster):
        def env(self) -> dict[str, str]:
            return {**super().env(), "METRICS_PORT": str(port),
                    metrics.MULTIPROC_ENV: str(folder)}

    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = MeteredCluster(request.getfixturevalue("pg_settings"), logs)
    try:
        day, _ = seed(cluster.settings, 40)  # two batches of BATCH_SIZE=20
        cluster.worker("metered", concurrency=2)
        cluster.tick()
        wait_for(lambda: settled(cluster.settings, day, 40), 120, "40 deliveries")
        url = f"http://127.0.0.1:{port}/metrics"
        sent = ("paper_digest_digests_total", (("outcome", "sent"),))
        batches = ("paper_digest_batch_duration_seconds_count", ())
        # A pool process writes its counts just after the ledger commit the wait saw.
        wait_for(lambda: [scraped(get(url)[1]).get(k) for k in (sent, batches)] == [40, 2], 10,
                 "the exporter to count 40 digests in 2 batches")
        summed = scraped(get(url)[1])
        assert summed[("paper_digest_digests_planned_total", ())] == 40
        assert summed[("paper_digest_smtp_transaction_duration_seconds_count", ())] == 40
        assert len(smtp_server.received) == 40
    finally:
        cluster.stop()


# --- deploy/: scrape config, alert rules, dashboard ------------------------------------------


def exported_names() -> set[str]:
    """Every sample name our metrics can export, touched yet or not."""
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum")}
    return {
        family.name + suffix
        for family in REGISTRY.collect() if family.name.startswith("paper_digest_")
        for suffix in suffixes[family.type]
    }


def named_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bpaper_digest_[a-z0-9_]+", text))


def test_alert_rules_name_only_metrics_that_exist() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"DigestsFailing", "DigestsInDoubt", "NoDigestSentToday", "SMTPErrorRate",
            "WebhookSignatureFailures"} <= {rule["alert"] for rule in alerts}
    for rule in alerts:
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert named_metrics(rule["expr"]) <= exported_names(), rule["alert"]


def test_scrape_config_reads_the_web_token_from_a_file_and_the_workers_exporter() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    web = jobs["paper-digest-web"]
    assert web["metrics_path"] == "/metrics"
    assert web["authorization"]["credentials_file"]  # never the token itself in the file
    assert "paper-digest-worker" in jobs
    assert config["rule_files"] == ["alerts.yml"]


def test_the_dashboard_is_json_naming_only_metrics_that_exist() -> None:
    text = (PROJECT_DIR / "deploy" / "grafana" / "paper-digest.json").read_text()
    dashboard = json.loads(text)
    assert dashboard["title"] and dashboard["panels"]
    assert named_metrics(text) <= exported_names()
