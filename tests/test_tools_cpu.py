"""The bench's CPU account: each party's CPU seconds, and how busy the cores were."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from digest.tools.cpu import CpuAccount, cpu_note, process_cpu_seconds

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc")

SPIN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"


def test_a_busy_process_is_charged_to_its_party_and_an_idle_one_is_not() -> None:
    busy = subprocess.Popen([sys.executable, "-c", SPIN + "time.sleep(5)", "spinner"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)", "sleeper"])
    try:
        account = CpuAccount({
            "spinner": lambda pid, _command: pid == busy.pid,
            "sleeper": lambda pid, _command: pid == idle.pid,
        }, interval=0.1).start()
        deadline = time.monotonic() + 10
        while (process_cpu_seconds(busy.pid) or 0) < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
        account.stop()
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    assert account.seconds["spinner"] >= 0.4
    assert account.seconds["sleeper"] < 0.1
    assert account.busy_share is not None and 0 < account.busy_share <= 1
    note = cpu_note(account, digests=1000)
    assert note is not None and "spinner" in note and "ms a digest" in note and "busy" in note


def test_a_process_that_is_gone_has_no_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_cpu_seconds(child.pid) is None
    assert (process_cpu_seconds(os.getpid()) or 0) > 0


def test_an_account_with_nothing_measured_prints_nothing() -> None:
    assert cpu_note(CpuAccount({}).stop(), digests=10) is None  # never started: nothing


def test_stopping_twice_keeps_the_first_account() -> None:
    account = CpuAccount({"me": lambda pid, _command: pid == os.getpid()}, interval=0.05).start()
    first = account.stop().seconds["me"]
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    assert account.stop().seconds["me"] == first
