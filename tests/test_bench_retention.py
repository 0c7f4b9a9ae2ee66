"""A small run of the retention benchmark (bench/retention.py) on both databases."""

from __future__ import annotations

import pytest

from bench.retention import Volumes, run, table

pytestmark = pytest.mark.slow


def test_the_retention_bench_measures_each_checkpoint_with_and_without_pruning() -> None:
    lines: list[str] = []
    measures = run(["sqlite", "postgresql"], Volumes(20, papers_per_day=40), [1, 35],
                   say=lines.append)
    kept = [(m.backend, m.days) for m in measures if not m.pruned]
    pruned = [m for m in measures if m.pruned]
    assert kept == [("sqlite", 1), ("sqlite", 35), ("postgresql", 1), ("postgresql", 35)]
    assert [(m.backend, m.days) for m in pruned] == [("sqlite", 35), ("postgresql", 35)]
    for m in measures:
        assert m.size > 0 and m.day_seconds > 0 and m.cpu_seconds > 0
    for m in pruned:  # the last week's prunes deleted the webhook events older than 30 days
        rows = int(m.note.rsplit(", ", 1)[1].split()[0].replace(",", ""))
        assert rows > 0, m.note
    printed = table(measures, [1, 35])
    assert printed.count("| sqlite |") == 2 and printed.count("| postgresql |") == 2
    assert any("pruned daily" in line for line in lines)
