"""The fork pool: what its run processes report adds up in the parent."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import date

from sqlalchemy.orm import Session

from digest.clock import CLOCK
from digest.pool import run_in_processes
from digest.settings import Settings
from digest.status import DayReport


def test_each_process_stage_seconds_add_up_in_the_parent(settings: Settings) -> None:
    """Two processes each spend about 0.2 s per batch in a stage: the parent's clock holds
    the sum over both (process-seconds), not the figure of whichever finished last."""

    def run(_session: Session, batches: Iterator[Sequence[int]], _progress: object
            ) -> tuple[DayReport, dict[str, int]]:
        for batch in batches:
            with CLOCK("work", len(batch)):
                time.sleep(0.2)
        return DayReport(day=date(2025, 1, 6)), {}

    CLOCK.reset()
    _, _, errors = run_in_processes(settings, date(2025, 1, 6), run,
                                    [[1, 2], [3, 4], [5, 6], [7, 8]], jobs=2)
    assert errors == []
    assert CLOCK.items["work"] == 8
    assert CLOCK.seconds["work"] >= 0.75  # four batches of 0.2 s, whichever process ran them
    CLOCK.reset()


def test_the_clock_adds_another_process_figures() -> None:
    CLOCK.reset()
    with CLOCK("render", 3):
        pass
    CLOCK.add({"render": 1.5, "send": 2.0}, {"render": 2, "send": 4})
    CLOCK.add({"render": 0.5}, {"render": 1})
    assert CLOCK.seconds["render"] >= 2.0 and CLOCK.seconds["send"] == 2.0
    assert CLOCK.items == {"render": 6, "send": 4}
    CLOCK.reset()
