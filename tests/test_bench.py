"""A small smoke run of `digest bench`: it generates a day, runs it, and prints every figure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.cli import main
from digest.settings import Settings
from digest.tools.bench import (
    LEDGER_EVERY,
    LEDGER_STALL,
    PROGRESS_EVERY,
    Figures,
    file_creation_seconds,
    ledger_wait,
    mean_file_size,
    run_bench,
    spread,
    spread_table,
)
from digest.tools.synthetic import temporary_redis_database

pytestmark = pytest.mark.slow


def test_bench_runs_in_process_and_on_a_worker(tmp_path: Path) -> None:
    lines: list[str] = []
    figures = run_bench(Settings(data_dir=tmp_path).resolved(), subscribers=120, papers=80,
                        workers=1, progress=lines.append)
    table = figures.table()
    for stage in ("whole day in-process", "score", "render", "send", "ledger",
                  "raw sparse product", "compiled once + Jinja fill", "pre-wrapped join",
                  "direct bytes", "trivial client", "1 Celery workers", "SMTP sink alone"):
        assert stage in table, stage
    assert "database statements" in table and "peak memory" in table
    assert "outside the batches' own work" in table
    assert "database after the day:" in table and "delivery_items" in table
    assert any("Generating" in line for line in lines)


def test_bench_command_prints_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["bench", "-n", "60", "-m", "40", "--backend", "file"],
                                env={"DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "whole day in-process (file)" in result.output


def test_each_stage_rate_says_what_it_is_per(tmp_path: Path) -> None:
    figures = run_bench(Settings(data_dir=tmp_path).resolved(), subscribers=60, papers=40,
                        backend="file", progress=lambda _: None)
    rates = {stage.strip(): rate for stage, _, rate, _, _ in figures.rows
             if stage.startswith("  ")}
    assert "ms per subscriber" in rates["load"] and "ms per subscriber" in rates["score"]
    assert "ms per email" in rates["render"] and "ms per email" in rates["send"]
    # The ledger is timed call by call; what matters is its cost per subscriber.
    assert rates["ledger"].split(" ms per subscriber")[0].replace(".", "").isdigit()
    assert "ms per call (" in rates["ledger"] and "ms per batch" in rates["ledger"]
    assert "ms per call" in rates["prepare"] and "ms/item" not in figures.table()
    assert figures.whole_day is not None and figures.whole_day > 0


def test_a_run_keeps_nothing_of_its_throwaway_databases(tmp_path: Path) -> None:
    # With --repeat each run would otherwise leave its prepared day behind in this process,
    # and the next run's forked run processes would count it in their peak memory.
    from digest import prepare

    before = set(prepare._PREPARED)
    run_bench(Settings(data_dir=tmp_path).resolved(), subscribers=40, papers=30,
              backend="file", progress=lambda _: None)
    assert set(prepare._PREPARED) <= before


def test_the_file_day_is_set_beside_its_best_case_summed_from_the_same_run(
    tmp_path: Path,
) -> None:
    figures = run_bench(Settings(data_dir=tmp_path).resolved(), subscribers=60, papers=40,
                        backend="file", progress=lambda _: None)
    row = next(r for r in figures.rows if r[0].startswith("whole day's best case"))
    parts = dict(part.rsplit(" ", 1) for part in  # "score 1.2 + HTML 0.3 + ..."
                 row[2].removesuffix(" process-s").split(" + "))
    assert list(parts) == ["score", "HTML", "text", "MIME", "file creation"]
    assert float(row[1].removesuffix(" s")) == pytest.approx(
        sum(map(float, parts.values())), abs=0.5)
    assert figures.whole_day is not None and figures.best_day_ratio is not None
    # The row prints the sum to the millisecond: the ratio is the day over it.
    assert figures.whole_day / figures.best_day_ratio == pytest.approx(
        float(row[1].removesuffix(" s")), abs=0.0006)
    assert row[4] == f"{figures.best_day_ratio:.2f}x"
    assert "the day's mean .eml" in "\n".join(figures.notes)
    assert not (tmp_path / "file-creation").exists()


def test_file_creation_makes_one_file_of_the_size_per_item(tmp_path: Path) -> None:
    seconds = file_creation_seconds(tmp_path, range(5), size=1234)
    (folder,) = tmp_path.iterdir()
    assert sorted(f.stat().st_size for f in folder.iterdir()) == [1234] * 5 and seconds > 0
    (tmp_path / "outbox" / "2026-12-07").mkdir(parents=True)
    for k, size in enumerate((100, 200, 301)):
        (tmp_path / "outbox" / "2026-12-07" / f"{k}.eml").write_bytes(b"x" * size)
    (tmp_path / "outbox" / "2026-12-07" / "index.html").write_bytes(b"x" * 9999)
    assert mean_file_size(tmp_path / "outbox") == 200


def test_bench_repeat_prints_each_run_and_the_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["bench", "-n", "40", "-m", "30", "--backend", "file", "--repeat", "2"],
        env={"DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "Run 1 of 2" in result.output and "Run 2 of 2" in result.output
    assert result.output.count("whole day in-process (file)") == 2
    spread_line = next(line for line in result.output.splitlines()
                       if line.strip().startswith("whole day in-process (s):"))
    assert "min" in spread_line and "median" in spread_line and "max" in spread_line


def test_the_spread_is_min_median_max_of_each_headline() -> None:
    runs = [Figures(10, 5, whole_day=d, workers_ratio=r)
            for d, r in ((30.0, 1.2), (34.0, None), (31.0, 1.4))]
    spread_of = spread(runs)
    assert spread_of["whole day in-process (s)"] == {"min": 30.0, "median": 31.0, "max": 34.0,
                                                      "runs": 3}
    assert spread_of["workers' time / the sink alone"] == pytest.approx(
        {"min": 1.2, "median": 1.3, "max": 1.4, "runs": 2})
    assert "1.20, 1.40  (min 1.20, median 1.30, max 1.40)" in spread_table(runs)
    assert spread([Figures(10, 5)]) == {}


def test_two_runs_never_share_a_redis_database() -> None:
    """Two runs at once (a bench beside a test run) each get a database of their own, and
    one run emptying its database leaves the other's keys alone."""
    import redis

    with temporary_redis_database() as first, temporary_redis_database() as second:
        assert first != second
        redis.Redis.from_url(second).set("bench-test:key", "kept")
        redis.Redis.from_url(first).flushdb()
        assert redis.Redis.from_url(second).get("bench-test:key") == b"kept"
    with temporary_redis_database() as again:  # given back at the end: free to claim again
        assert again in (first, second)
        assert redis.Redis.from_url(again).dbsize() == 0


def test_bench_shares_the_in_process_day_among_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["bench", "-n", "120", "-m", "40", "--backend", "file", "--batch-size", "10",
               "--jobs", "2"], env={"DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "whole day in-process, 2 processes (file)" in result.output
    assert "process-seconds" in result.output and "largest run process" in result.output
    statements = next(line for line in result.output.splitlines() if "statements" in line)
    per_batch = float(statements.split(" per batch")[0].rsplit("= ", 1)[1])
    assert 5 < per_batch < 40, statements  # the children's statements are counted too


def test_bench_can_run_on_workers_only(tmp_path: Path) -> None:
    figures = run_bench(Settings(data_dir=tmp_path).resolved(), subscribers=40, papers=30,
                        workers=1, in_process=False, progress=lambda _: None, sink_count=20)
    stages = [row[0] for row in figures.rows]
    assert stages[0] == "whole day, 1 Celery workers" and "in-process" not in figures.table()
    # --sink-count: the sink alone is timed on 20 of them, its rate standing for the 40.
    assert stages[1].startswith("SMTP sink alone: 40 digests (rate over 20)")
    # ... and fed by the same client pipelining its commands, as the workers do.
    assert stages[2].startswith("SMTP sink alone: 40 digests (rate over 20), pipelining")
    assert figures.rows[2][-1].endswith("x")
    # Celery's share and the statements per batch, as the worker processes measured them.
    notes = "\n".join(figures.notes)
    assert "inside the workers: " in notes and "Celery between them" in notes
    assert "database statements per batch of" in notes and "planning: first batch at" in notes
    assert "asked the ledger" in notes  # how often the bench's watcher counted the day
    # Where the cores went: each party's CPU, and how busy the cores were.
    cpu = next(line for line in figures.notes if "CPU while the workers ran" in line)
    assert "workers " in cpu and "PostgreSQL" in cpu and "the sink" in cpu and "busy" in cpu


def test_the_day_watcher_asks_the_ledger_when_the_sink_stands_still_not_as_it_fills() -> None:
    """Counting a day's ledger rows costs time in proportion to the day: a watcher asking
    every few seconds made a 1,000,000 day's database work grow with the square of its size."""
    assert ledger_wait(arriving=True, still=0.0) == LEDGER_EVERY >= 60
    assert ledger_wait(arriving=True, still=LEDGER_STALL) == LEDGER_STALL <= 0.5
    assert ledger_wait(arriving=False, still=30.0) == PROGRESS_EVERY


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module `path` imports, at the top or in a function, relative names resolved."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            prefix = ".".join(base) if node.level else ""
            module = ".".join(filter(None, [prefix, node.module or ""]))
            modules.add(module)
            modules.update(f"{module}.{alias.name}" for alias in node.names)
    return modules


def test_the_library_never_imports_the_tools_or_the_workers() -> None:
    """The shipped library stays free of developer tools and of Celery's `workers`; only the
    CLI, a door like the workers themselves, may reach into digest.tools."""
    library = Path(__file__).resolve().parents[1] / "digest"
    offenders = []
    for path in sorted(library.rglob("*.py")):
        relative = path.relative_to(library.parent)
        if relative.parts[1] in {"tools", "cli", "cli.py", "migrations"}:
            continue
        package = ".".join(relative.with_suffix("").parts)
        if path.name != "__init__.py":
            package = package.rpartition(".")[0]
        for module in _imported_modules(path, package):
            if module == "workers" or module.startswith(("workers.", "digest.tools")):
                offenders.append(f"{relative}: {module}")
    assert offenders == []
