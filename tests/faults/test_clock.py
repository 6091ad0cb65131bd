"""Steps of the system clock (issue 15, point 6): NTP, a resumed laptop or a person moves
the wall clock by an hour while a run goes on. Durations (timeouts, retry back-off,
reserve_after) must be measured on a monotonic clock; a step must neither fire every timeout
at once (+1 h) nor delay them by the step (-1 h).

The clock is injected: the driver module's ``time`` is replaced by one whose ``time()``
jumps when the test says so (``monotonic()`` is the real one). No timing thresholds: the test
waits for driver iterations (clock reads) after the jump, and for the run's end.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.runtime import driver

from .helpers import hold

DEADLINE = 120.0


class Jumpy:
    """``time`` as the driver sees it: the wall clock can be stepped; reads are counted."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.reads = 0
        self.lock = threading.Lock()

    def time(self) -> float:
        with self.lock:
            self.reads += 1
        return time.time() + self.offset

    def monotonic(self) -> float:
        with self.lock:
            self.reads += 1
        return time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _wait(cond: Any, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not cond():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Jumpy:
    fake = Jumpy()
    monkeypatch.setattr(driver, "time", fake)
    return fake


def test_a_step_forward_fires_no_timeout(tmp_path: Path, clock: Jumpy) -> None:
    started, flag = tmp_path / "started", tmp_path / "flag"
    with shoal.Workflow("forward") as wf:
        t = hold.options(timeout=60)(str(started), str(flag))
    run = wf.submit(cpus=1, base=tmp_path)
    try:
        _wait(started.exists, "the task to start")
        clock.offset = 3600.0  # the wall clock jumps an hour ahead
        seen = clock.reads
        _wait(lambda: clock.reads > seen + 100 or run.done, "driver iterations after it")
        assert not run.done, run.failures()  # before: "timed out after 60 s" at once
    finally:
        flag.touch()
    run.wait(DEADLINE)
    assert run.state == "succeeded", run.failures()
    assert run.result(t) == "done"


def test_a_step_back_delays_no_timeout(tmp_path: Path, clock: Jumpy) -> None:
    started, flag = tmp_path / "started", tmp_path / "flag"
    with shoal.Workflow("back") as wf:
        hold.options(timeout=1)(str(started), str(flag))
    run = wf.submit(cpus=1, base=tmp_path)
    try:
        _wait(started.exists, "the task to start")
        clock.offset = -3600.0  # the wall clock jumps an hour back
        _wait(lambda: run.done, "the timeout of 1 s to fire")
    finally:
        flag.touch()
        run.wait(DEADLINE)
    assert run.state == "failed"
    (f,) = run.failures()
    assert f["kind"] == "timeout" and "timed out after 1 s" in f["reason"], f
