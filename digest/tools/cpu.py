"""Where the machine's CPU went while the workers ran the day: each party's CPU seconds and
how busy the cores were, read from /proc (Linux).

The workers' ratio to the sink is bounded by the cores they share with the sink, PostgreSQL
and Redis. These figures tell the two reasons for a gap apart: CPU (the parties' seconds
summed fill the cores) or waiting (the cores sit idle while connections wait on replies).
Elsewhere than Linux the account is empty and the bench prints nothing of it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds of a live process so far; None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def cores_busy_and_total() -> tuple[float, float] | None:
    """All cores' busy and total time so far, in clock ticks, from /proc/stat."""
    try:
        first = (PROC / "stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def _command(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


@dataclass
class CpuAccount:
    """CPU seconds per party over a span, sampled every `interval` seconds in a thread.

    A process is charged what it used between its first sample and its last, so processes
    that come and go (PostgreSQL's backends) are counted while they lived; a process that
    exits loses at most one interval of its use. `parties` maps a party's name to a function
    that tells its processes by pid and command line; a process is the first party's that
    claims it.
    """

    parties: dict[str, Callable[[int, str], bool]]
    interval: float = 0.5
    seconds: dict[str, float] = field(default_factory=dict)
    busy_share: float | None = None  # of all cores, over the span
    span: float = 0.0
    _first: dict[int, tuple[str, float]] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _others: set[int] = field(default_factory=set)  # no party's: their command is read once
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cores: tuple[float, float] | None = None

    def start(self) -> CpuAccount:
        self._cores = cores_busy_and_total()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="cpu-account", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> CpuAccount:
        """Take the last sample and sum the account; once only (later calls keep it)."""
        if self._thread is None or self._stop.is_set():
            return self
        self._stop.set()
        self._thread.join()
        self._sample()
        end = cores_busy_and_total()
        if self._cores is not None and end is not None and end[1] > self._cores[1]:
            self.busy_share = (end[0] - self._cores[0]) / (end[1] - self._cores[1])
            self.span = (end[1] - self._cores[1]) / _TICK / (os.cpu_count() or 1)
        self.seconds = {name: 0.0 for name in self.parties}
        for pid, (name, first) in self._first.items():
            self.seconds[name] += self._last.get(pid, first) - first
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for pid in _pids():
            if pid in self._others:
                continue
            known = pid in self._first
            name = None if known else self._party(pid)
            if not known and name is None:
                self._others.add(pid)
                continue
            used = process_cpu_seconds(pid)
            if used is None:
                continue
            if name is not None:
                # First seen now: charged only from here (a PostgreSQL backend that started
                # before the span has its earlier use left out).
                self._first[pid] = (name, used)
            self._last[pid] = used

    def _party(self, pid: int) -> str | None:
        command = _command(pid)
        for name, member in self.parties.items():
            if member(pid, command):
                return name
        return None


def _pids() -> Iterable[int]:
    try:
        return [int(p) for p in os.listdir(PROC) if p.isdigit()]
    except OSError:
        return []


def cpu_note(account: CpuAccount, digests: int) -> str | None:
    """One line for the bench: each party's CPU seconds (ms a digest), the cores' busy share."""
    if account.busy_share is None or not account.seconds:
        return None
    parts = ", ".join(
        f"{name} {seconds:,.1f} s ({seconds / max(digests, 1) * 1000:.2f} ms a digest)"
        for name, seconds in account.seconds.items()
    )
    cores = os.cpu_count() or 1
    used = sum(account.seconds.values())
    return (
        f"  CPU while the workers ran (from /proc): {parts}; together {used:,.1f} s of the "
        f"{account.span * cores:,.1f} core-seconds there were; the {cores} cores were busy "
        f"{account.busy_share:.1%} of the time (idle time is waiting, not work)"
    )
