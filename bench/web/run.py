"""Load-test the web app as deployed: gunicorn with the production command, PostgreSQL, Redis,
SMTP to a local sink, and 200 concurrent locust clients on the four doors strangers use.

    python -m bench.web [--users 200] [--run-time 60s] [--subscribers 3000]

Everything it needs it makes, on 127.0.0.1 only, and removes at the end, even on Ctrl-C: a
scratch PostgreSQL database (migrated, the bundled sample papers ingested, subscribers
added), its own Redis database number, an aiosmtpd sink, gunicorn. The gunicorn command is
the production unit's (deploy/systemd/paper-digest-web.service) with only the address
changed, plus a config of hooks (`gunicorn_probe.py`) that checks no request waits on SMTP
while it holds a database connection.

The subscribe rate limits are raised far above what the run can reach: every request still
counts itself in Redis as in production, but none is refused, since all clients share one
address. A 429 would still be counted, apart from the errors.

Prints, per endpoint and in total: requests/s, p50 and p99 latency, 429s and errors (5xx,
connection errors, any unexpected answer). Exits 1 if anything errored or broke the rule.
"""

from __future__ import annotations

import argparse
import configparser
import json
import math
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text

from digest import db, notices, tokens
from digest.ingest import load_sample_papers
from digest.models import SubscriberStatus
from digest.settings import PROJECT_DIR, Settings, setting_names
from digest.subscribers import add_subscriber
from digest.tools.synthetic import ScratchDatabaseError, temporary_postgres

from .payloads import RATE_LIMITED, TIME_ZONES, TOPICS, Targets

HERE = Path(__file__).resolve().parent
WEB_UNIT = PROJECT_DIR / "deploy" / "systemd" / "paper-digest-web.service"
VENV_BIN = Path(sys.executable).parent
DEFAULT_POSTGRES = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_DB = 11  # its own: `make bench` uses 12, the tests 13 and 14, the app 0 by default
RATE_LIMIT_OFF_SCALE = 10_000_000  # per hour / per day: never reached, still counted
# The locustfile's request names, as the probe names the same requests.
MEASURED_ENDPOINTS = ("GET /", "GET /preview", "POST /subscribe", "POST /unsubscribe/<token>",
                      "POST /webhooks/generic")
STOP_SECONDS = 35  # the unit's TimeoutStopSec: gunicorn's graceful 30 s, and a margin


class BenchError(RuntimeError):
    """The benchmark could not run; the message says what to do."""


@dataclass
class Options:
    users: int = 200
    spawn_rate: float = 100.0
    run_time: str = "60s"
    subscribers: int = 3000
    think_seconds: float = 0.0
    smtp_delay: float = 0.0
    redis_db: int = REDIS_DB
    postgres_admin_url: str = DEFAULT_POSTGRES


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.web",
        description="Load-test the web app under gunicorn with the production settings.",
    )
    parser.add_argument("--users", type=int, default=200, help="concurrent clients (200)")
    parser.add_argument("--spawn-rate", type=float, default=100.0,
                        help="clients started per second (100)")
    parser.add_argument("--run-time", default="60s", help="how long, e.g. 60s or 2m (60s)")
    parser.add_argument("--subscribers", type=int, default=3000,
                        help="subscribers seeded; their links and addresses are used (3000)")
    parser.add_argument("--think", type=float, default=0.0, dest="think_seconds",
                        help="mean pause between a client's requests, seconds (0: none)")
    parser.add_argument("--smtp-delay", type=float, default=0.0,
                        help="seconds the sink waits before answering DATA, like a relay (0)")
    parser.add_argument("--redis-db", type=int, default=REDIS_DB,
                        help=f"Redis database number on 127.0.0.1:6379 ({REDIS_DB})")
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES,
                        help="a PostgreSQL URL on 127.0.0.1 that may create databases")
    return Options(**vars(parser.parse_args(argv)))


# --- the run, top-down ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    try:
        with interrupt_on_sigterm():
            return run(options)
    except BenchError as exc:
        print(f"bench-web: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench-web: interrupted; everything it started was stopped.", file=sys.stderr)
        return 130


def run(options: Options) -> int:
    """Set everything up, load it, report; each `with` stops what it started."""
    check_loopback(options.postgres_admin_url)
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        database_url = stack.enter_context(scratch_database(options.postgres_admin_url))
        redis_url = f"redis://127.0.0.1:6379/{options.redis_db}"
        stack.callback(forget_rate_limit_counts, redis_url)
        sink = stack.enter_context(smtp_sink(options.smtp_delay))
        port = free_port()
        settings = bench_settings(workdir, database_url, redis_url, sink.port, port)
        say("migrating the scratch database and seeding it")
        db.upgrade(settings)
        targets = seed(settings, options.subscribers)
        server = stack.enter_context(gunicorn(settings, port, workdir))
        say(f"gunicorn: {shlex.join(server.command)}")
        say(f"warming up ({server.workers} workers build the day's index once): "
            f"{warm_up(server.url, server.workers):.1f} s")
        watcher = stack.enter_context(watch_postgres(options.postgres_admin_url, database_url))
        meter = CpuMeter(server.process.pid)
        results = run_locust(options, server.url, targets, workdir)
        cpu = meter.read(watcher)
        server.stop()  # workers write their probe reports as they exit
        at_stop = sink.received_count()
        # What the beat's send_signup_emails would do a minute later: the requests are the
        # queue, so what gunicorn's senders had not reached when it stopped still goes out.
        swept = notices.send_pending_signup_emails(settings)
        probe = read_probe(workdir / "probe")
        print()
        print(format_table(results, probe))
        print()
        print(format_notes(options, server, at_stop, probe, watcher, cpu, results))
        print(f"sign-up emails sent by the sweep after gunicorn stopped: {swept:,}")
        outcome = verdict(results, probe, sink.received_count())
        if outcome and (traceback := last_traceback(server.log)):
            print(f"\nthe last traceback in gunicorn's log:\n{traceback}")
        return outcome


def verdict(results: list[Result], probe: ProbeReport, emails: int) -> int:
    """0 if nothing errored, nothing waited on SMTP holding a database connection, and every
    accepted subscribe (each for a new address) had its confirmation email at the sink."""
    errors = sum(r.errors for r in results if r.name == "Total")
    missing = max(0, accepted_subscribes(results) - emails)
    if probe.workers == 0:
        say("no gunicorn worker wrote its probe report: the SMTP rule was not checked")
        return 1
    if errors or probe.held_waits or missing:
        say(f"FAILED: {errors:,} errors, {probe.held_waits:,} SMTP waits holding a database "
            f"connection, {missing:,} accepted subscribes without their email")
        return 1
    return 0


def accepted_subscribes(results: list[Result]) -> int:
    return next((r.requests - r.errors - r.rate_limited for r in results
                 if r.name == "POST /subscribe"), 0)


def say(message: str) -> None:
    print(f"bench-web: {message}", flush=True)


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C: through every `finally`, so nothing is left behind."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_loopback(url: str) -> None:
    host = urlsplit(url.replace("+psycopg", "")).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise BenchError(f"the PostgreSQL server must be on 127.0.0.1, not {host!r}.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- what it sets up ------------------------------------------------------------------------


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped at the end (with any connection left to it)."""
    try:
        with temporary_postgres(admin_url, prefix="digest_benchweb") as url:
            yield url
    except ScratchDatabaseError as exc:
        raise BenchError(str(exc)) from exc


def bench_settings(
    workdir: Path, database_url: str, redis_url: str, smtp_port: int, web_port: int
) -> Settings:
    """The production settings, pointed at what this run made; rate limits out of reach."""
    return Settings(
        data_dir=workdir / "data",
        database_url=database_url,
        redis_url=redis_url,
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        mail_from="Paper Digest <digest@bench.example.org>",
        public_base_url=f"http://127.0.0.1:{web_port}",
        secret_key=secrets.token_urlsafe(32),
        webhook_secret=secrets.token_urlsafe(32),
        subscribe_rate_limit_per_hour=RATE_LIMIT_OFF_SCALE,
        subscribe_address_limit_per_day=RATE_LIMIT_OFF_SCALE,
    ).resolved()


def environment_of(settings: Settings) -> dict[str, str]:
    """The process environment that makes `Settings.from_env()` give `settings`: the caller's
    own settings variables are dropped, so only this run's reach gunicorn."""
    names = set(setting_names())
    defaults = Settings()
    env = {k: v for k, v in os.environ.items() if k not in names}
    for name in names:
        value = getattr(settings, name.lower())
        if value != getattr(defaults, name.lower()):
            env[name] = str(value)
    return env


def seed(settings: Settings, count: int) -> Targets:
    """The sample papers and `count` active subscribers; their one-click links and addresses.

    Links are made by the library's own `tokens.link` for each subscriber row, whatever form
    tokens take.
    """
    with db.session_scope(settings) as session:
        load_sample_papers(session)
        subscribers = [
            add_subscriber(session, f"reader-{i}@example.org", TOPICS[i % len(TOPICS)],
                           time_zone=TIME_ZONES[i % len(TIME_ZONES)],
                           status=SubscriberStatus.ACTIVE)
            for i in range(count)
        ]
        half = count // 2
        paths = [
            urlsplit(tokens.link(settings, tokens.Purpose.UNSUBSCRIBE, s)).path
            for s in subscribers[:half]
        ]
        addresses = [s.email for s in subscribers[half:]]
    return Targets(paths, addresses, settings.webhook_secret)


@dataclass
class Sink:
    port: int
    received_count: Callable[[], int]


@contextmanager
def smtp_sink(delay: float) -> Iterator[Sink]:
    """The tests' aiosmtpd server on loopback, answering DATA after `delay` seconds."""
    from tests.smtp_server import SMTPServer  # `python -m bench.web` runs from the checkout

    server = SMTPServer(data_delay=delay)
    server.start()
    try:
        yield Sink(server.port, lambda: len(server.received))
    finally:
        server.stop()


@dataclass
class Gunicorn:
    command: list[str]
    url: str
    workers: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM to the master (graceful, as systemd does), SIGKILL to all if it hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def production_command(port: int) -> list[str]:
    """The production unit's gunicorn command, run from this virtualenv on 127.0.0.1:port.

    A relative `--config` path is made absolute (the unit runs from the checkout).
    """
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(WEB_UNIT.read_text())
    command = shlex.split(unit["Service"]["ExecStart"])
    if Path(command[0]).name != "gunicorn" or "--bind" not in command:
        raise BenchError(f"{WEB_UNIT.name}: ExecStart is not `gunicorn --bind ...`; update "
                         "bench/web/run.py to start what it starts now.")
    command[0] = str(VENV_BIN / "gunicorn")
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    if (at := config_index(command)) is not None:
        command[at] = str(PROJECT_DIR / command[at])
    return command


def config_index(command: list[str]) -> int | None:
    """Where the value of `--config` / `-c` is in `command`, if it names a config file."""
    for flag in ("--config", "-c"):
        if flag in command:
            return command.index(flag) + 1
    return None


def probed(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """`command` with the probe as its config file, which takes the production one's settings
    and hooks from BENCH_WEB_BASE_CONFIG; and the environment that says so."""
    probe = str(HERE / "gunicorn_probe.py")
    at = config_index(command)
    if at is None:
        return [*command[:-1], "--config", probe, command[-1]], {}
    return [*command[:at], probe, *command[at + 1:]], {"BENCH_WEB_BASE_CONFIG": command[at]}


def worker_count(command: list[str]) -> int:
    for flag in ("--workers", "-w"):
        if flag in command:
            return int(command[command.index(flag) + 1])
    return 1  # gunicorn's default


@contextmanager
def gunicorn(settings: Settings, port: int, workdir: Path) -> Iterator[Gunicorn]:
    """Gunicorn started as production starts it, with the probe's hooks; ready when /healthz
    answers 200. Run from `workdir` so no `.env` of the checkout is read."""
    command = production_command(port)
    with_probe, probe_env = probed(command)
    (workdir / "probe").mkdir()
    env = {**environment_of(settings), **probe_env, "BENCH_WEB_PROBE_DIR": str(workdir / "probe")}
    log = workdir / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(with_probe, cwd=workdir, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Gunicorn(command, f"http://127.0.0.1:{port}", worker_count(command), process, log)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        server.stop()


def wait_until_healthy(server: Gunicorn, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"gunicorn exited at start; its log:\n{tail(server.log)}")
        with suppress(OSError), urllib.request.urlopen(server.url + "/healthz",
                                                      timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"gunicorn did not answer /healthz within {timeout:.0f} s; its log:\n"
                     f"{tail(server.log)}")


def last_traceback(log: Path) -> str:
    """The last Python traceback gunicorn logged (a 500's cause), or ""."""
    text = log.read_text(errors="replace")
    start = text.rfind("Traceback (most recent call last)")
    if start < 0:
        return ""
    lines = text[start:].splitlines()
    end = next((n for n, line in enumerate(lines[1:], 1) if not line.startswith(" ")),
               len(lines) - 1)
    return "\n".join(lines[: end + 1])  # up to the exception's own line


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def warm_up(url: str, workers: int) -> float:
    """Previews until every worker has answered one: each builds the day's index on its first
    (production pays this once per worker and day, not per request). Returns the seconds."""
    started = time.perf_counter()

    def preview(_: int) -> None:
        request = urllib.request.Request(url + "/preview?topics=LoRA",
                                         headers={"X-Bench-Warm-Up": "1"})
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()

    with ThreadPoolExecutor(workers * 2) as pool:
        list(pool.map(preview, range(workers * 4)))
    return time.perf_counter() - started


def forget_rate_limit_counts(redis_url: str) -> None:
    """Delete the counters this run left in its Redis database (and only those)."""
    import redis

    from digest.ratelimit import KEY_PREFIX

    client = redis.Redis.from_url(redis_url)
    with suppress(redis.RedisError):
        for key in client.scan_iter(f"{KEY_PREFIX}:*"):
            client.delete(key)
    client.close()


# --- watching while it runs -----------------------------------------------------------------


@dataclass
class PostgresWatch:
    """Peak connections to the scratch database, how many sat idle inside a transaction, and
    the statement each such connection ran last (where a request keeps a transaction open)."""

    peak_connections: int = 0
    peak_idle_in_transaction: int = 0
    samples: int = 0
    idle_in_transaction_after: Counter[str] = field(default_factory=Counter)
    backend_cpu: dict[int, tuple[float, float]] = field(default_factory=dict)  # first, last

    def backend_cpu_seconds(self) -> float:
        """CPU the database's server processes used while watched (PostgreSQL is local)."""
        return sum(last - first for first, last in self.backend_cpu.values())


@contextmanager
def watch_postgres(admin_url: str, database_url: str) -> Iterator[PostgresWatch]:
    name = database_url.rsplit("/", 1)[1]
    watch = PostgresWatch()
    stop = threading.Event()
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    query = text(
        "SELECT pid, state, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
        "FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
    )

    def sample() -> None:
        with engine.connect() as conn:
            while not stop.wait(0.25):
                rows = conn.execute(query, {"name": name}).all()
                for pid, _state, _query in rows:
                    used = cpu_seconds(pid)
                    first = watch.backend_cpu.get(pid, (used, used))[0]
                    watch.backend_cpu[pid] = (first, used)
                idle_in_tx = [q for _, state, q in rows if (state or "").startswith("idle in tr")]
                watch.peak_connections = max(watch.peak_connections, len(rows))
                watch.peak_idle_in_transaction = max(watch.peak_idle_in_transaction,
                                                     len(idle_in_tx))
                watch.idle_in_transaction_after.update(idle_in_tx)
                watch.samples += 1

    thread = threading.Thread(target=sample, name="watch-postgres", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(5)
        engine.dispose()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def with_children(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *map(int, children)]


def machine_times() -> tuple[int, int]:
    """All CPU time and idle time of the machine so far, in clock ticks (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]  # idle + iowait


@dataclass
class CpuUse:
    """Who used the machine's CPU during the run, in core-seconds."""

    seconds: float
    cores: int
    gunicorn: float
    locust: float
    postgres: float
    machine_busy: float  # share of all cores, everyone's processes

    def summary(self, requests: int) -> str:
        """The split, and gunicorn's CPU per request: a figure other processes on the machine
        barely move, unlike requests/s."""
        ours = self.gunicorn + self.locust + self.postgres
        per_request = self.gunicorn / requests * 1000 if requests else 0.0
        return (
            f"CPU during the run ({self.seconds:.0f} s x {self.cores} cores = "
            f"{self.seconds * self.cores:.0f} core-s): gunicorn {self.gunicorn:.0f} "
            f"({per_request:.1f} ms a request), PostgreSQL {self.postgres:.0f}, locust "
            f"{self.locust:.0f} (this run: {ours:.0f}); machine busy {self.machine_busy:.0%}, "
            "other processes included"
        )


class CpuMeter:
    """Started before the load, read after it: the CPU gunicorn (master and workers), locust
    (the only child reaped meanwhile) and the database's backends used, and the machine's."""

    def __init__(self, gunicorn_pid: int) -> None:
        self.pid = gunicorn_pid
        self.started = time.monotonic()
        self.gunicorn = sum(map(cpu_seconds, with_children(gunicorn_pid)))
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children = usage.ru_utime + usage.ru_stime
        self.machine = machine_times()

    def read(self, watch: PostgresWatch) -> CpuUse:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        total, idle = machine_times()
        spent = total - self.machine[0]
        return CpuUse(
            seconds=time.monotonic() - self.started,
            cores=os.cpu_count() or 1,
            gunicorn=sum(map(cpu_seconds, with_children(self.pid))) - self.gunicorn,
            locust=usage.ru_utime + usage.ru_stime - self.children,
            postgres=watch.backend_cpu_seconds(),
            machine_busy=1 - (idle - self.machine[1]) / spent if spent else 0.0,
        )


# --- locust ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the table: an endpoint, or the total."""

    name: str
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    rate_limited: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)


def run_locust(options: Options, url: str, targets: Targets, workdir: Path) -> list[Result]:
    """Locust headless against `url`; the per-endpoint results it saved at the end."""
    targets_file, results_file = workdir / "targets.json", workdir / "results.json"
    targets.save(targets_file)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR), "BENCH_WEB_TARGETS": str(targets_file),
           "BENCH_WEB_RESULTS": str(results_file),
           "BENCH_WEB_THINK_SECONDS": str(options.think_seconds)}
    log = workdir / "locust.log"
    command = [
        str(VENV_BIN / "locust"), "-f", str(HERE / "locustfile.py"), "--headless",
        "--host", url, "--users", str(options.users), "--spawn-rate", str(options.spawn_rate),
        "--run-time", options.run_time, "--stop-timeout", "10", "--only-summary",
        "--logfile", str(log), "--loglevel", "WARNING",
    ]
    say(f"locust: {options.users} clients for {options.run_time} "
        f"(think time {options.think_seconds:g} s, SMTP delay {options.smtp_delay:g} s)")
    # Its own session, so Ctrl-C reaches only this runner, which stops locust in order.
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        process.wait()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if not results_file.is_file():
        raise BenchError(f"locust saved no statistics; its log:\n{tail(log)}")
    warnings = [line for line in log.read_text(errors="replace").splitlines()
                if "CPU usage" in line]
    if warnings:
        say(f"locust warned: {warnings[0].strip()} (latencies include the client's own wait)")
    return read_results(results_file)


def read_results(path: Path) -> list[Result]:
    """The locustfile's final statistics, with its failures split into 429s and errors."""
    saved = json.loads(path.read_text())
    failures: dict[str, dict[str, int]] = {}
    for error in saved["errors"]:
        kinds = failures.setdefault(error["name"], {})
        kinds[error["error"]] = kinds.get(error["error"], 0) + int(error["occurrences"])
    results = []
    for row in saved["endpoints"]:
        name = row["name"]
        kinds = _summed(failures.values()) if name == "Total" else failures.get(name, {})
        limited = kinds.get(RATE_LIMITED, 0)
        results.append(Result(
            name=name,
            requests=int(row["requests"]),
            per_second=float(row["per_second"]),
            p50_ms=float(row["p50_ms"]),
            p99_ms=float(row["p99_ms"]),
            max_ms=float(row["max_ms"]),
            rate_limited=limited,
            errors=int(row["failures"]) - limited,
            error_kinds={k: v for k, v in kinds.items() if k != RATE_LIMITED},
        ))
    return results


def _summed(per_name: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for kinds in per_name:
        for kind, count in kinds.items():
            total[kind] = total.get(kind, 0) + count
    return total


# --- the report ------------------------------------------------------------------------------


def format_table(results: list[Result], probe: ProbeReport) -> str:
    """Locust's view (with gunicorn's queue) next to the time each request spent in the app."""
    header = ("endpoint", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "in app p50",
              "in app p99", "429", "errors")
    rows = [header] + [
        (r.name, f"{r.requests:,}", f"{r.per_second:.1f}", f"{r.p50_ms:.0f}", f"{r.p99_ms:.0f}",
         f"{r.max_ms:.0f}", f"{percentile(probe.in_app(r.name), 0.5):.0f}",
         f"{percentile(probe.in_app(r.name), 0.99):.0f}", str(r.rate_limited), str(r.errors))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    lines = []
    for row in rows:
        if row[0] == "Total":
            lines.append(rule)
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if row is header:
            lines.append(rule)
    return "\n".join(lines)


@dataclass
class ProbeReport:
    """What the gunicorn workers saw from inside (gunicorn_probe.py), all workers together."""

    workers: int = 0
    smtp_waits: int = 0
    smtp_wait_seconds: float = 0.0
    held_waits: int = 0
    held_wait_seconds: float = 0.0
    held_paths: dict[str, int] = field(default_factory=dict)
    smtp_waits_by: dict[str, int] = field(default_factory=dict)  # route, or thread outside one
    service_ms: dict[str, list[float]] = field(default_factory=dict)  # per endpoint

    def add(self, data: dict[str, Any]) -> None:
        self.workers += 1
        self.smtp_waits += data["smtp_waits"]
        self.smtp_wait_seconds += data["smtp_wait_seconds"]
        self.held_waits += data["held_waits"]
        self.held_wait_seconds += data["held_wait_seconds"]
        self.held_paths = _summed([self.held_paths, data["held_paths"]])
        self.smtp_waits_by = _summed([self.smtp_waits_by, data["smtp_waits_by"]])
        for name, times in data["service_ms"].items():
            self.service_ms.setdefault(name, []).extend(times)

    def in_app(self, name: str) -> list[float]:
        """Times in the app for one endpoint, or for all the measured ones ("Total")."""
        if name != "Total":
            return self.service_ms.get(name, [])
        return [t for n in MEASURED_ENDPOINTS for t in self.service_ms.get(n, [])]


def read_probe(folder: Path) -> ProbeReport:
    report = ProbeReport()
    for path in sorted(folder.glob("worker-*.json")):
        report.add(json.loads(path.read_text()))
    return report


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (locust reports the same kind)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def format_notes(
    options: Options, server: Gunicorn, received: int, probe: ProbeReport,
    watch: PostgresWatch, cpu: CpuUse, results: list[Result],
) -> str:
    subscribed = accepted_subscribes(results)
    lines = [
        f"gunicorn: {server.workers} workers (the production unit's command); "
        f"{options.users} clients, think time {options.think_seconds:g} s",
        cpu.summary(next((r.requests for r in results if r.name == "Total"), 0)),
        f"SMTP sink (answers DATA after {options.smtp_delay:g} s): {received:,} confirmation "
        f"emails for {subscribed:,} accepted subscribes, by the time gunicorn had stopped",
        f"SMTP replies the gunicorn workers waited for: {probe.smtp_waits:,} "
        f"({probe.smtp_wait_seconds:.1f} s; {probe.smtp_waits_by}); while holding a database "
        f"connection: {probe.held_waits:,}"
        + (f" ({probe.held_wait_seconds:.1f} s, {probe.held_paths})" if probe.held_waits else "")
        + f" [{probe.workers} worker reports]",
        f"PostgreSQL: peak {watch.peak_connections} connections to the scratch database, "
        f"peak {watch.peak_idle_in_transaction} idle in a transaction "
        f"({watch.samples} samples)",
    ]
    slowest = max(((max(probe.in_app(n), default=0.0), n) for n in MEASURED_ENDPOINTS),
                  default=(0.0, ""))
    lines.append(f"slowest request in the app: {slowest[1]} {slowest[0]:.0f} ms "
                 "(the warm-up's are not counted: the first preview of each worker builds "
                 "the day's index)")
    for statement, count in watch.idle_in_transaction_after.most_common(3):
        lines.append(f"  idle in a transaction after: {statement!r} in {count} samples")
    for r in results:
        for kind, count in sorted(r.error_kinds.items(), key=lambda kv: -kv[1]):
            if r.name != "Total":
                lines.append(f"error: {r.name}: {count:,} x {kind}")
    return "\n".join(lines)
