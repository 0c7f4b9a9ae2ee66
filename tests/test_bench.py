"""A small smoke run of `digest bench`: it generates a day, runs it, and prints every figure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.cli import main
from digest.settings import Settings
from digest.tools.bench import run_bench

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
    assert any("Generating" in line for line in lines)


def test_bench_command_prints_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["bench", "-n", "60", "-m", "40", "--backend", "file"],
                                env={"DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "whole day in-process (file)" in result.output


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
                        workers=1, in_process=False, progress=lambda _: None)
    stages = [row[0] for row in figures.rows]
    assert stages[0] == "whole day, 1 Celery workers" and "in-process" not in figures.table()
    assert stages[1].startswith("SMTP sink alone: 40 digests")


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
