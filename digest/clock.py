"""Seconds spent in each stage of the day's pipeline, in this process.

`digest bench` and profiling read `CLOCK`; a forked run process sends its own back to the
parent, which adds them up (`pool.py`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter


@dataclass
class StageClock:
    """Seconds and items per pipeline stage in this process, for `digest bench` and profiling."""

    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    items: Counter[str] = field(default_factory=Counter)

    @contextmanager
    def __call__(self, stage: str, items: int = 1) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += perf_counter() - start
            self.items[stage] += items

    def add(self, seconds: dict[str, float], items: dict[str, int]) -> None:
        """Add another process's figures to these (a forked run process's, say): the stages'
        process-seconds sum, as their items do."""
        for stage, spent in seconds.items():
            self.seconds[stage] += spent
        self.items.update(items)

    def reset(self) -> None:
        self.seconds.clear()
        self.items.clear()


CLOCK = StageClock()
