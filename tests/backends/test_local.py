"""The local backend against the conformance suite."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.backends import processes
from shoal.backends.local import LocalBackend

from .conformance import BackendContract


class TestLocalConformance(BackendContract):
    @pytest.fixture
    def backend(self, rundir: Path) -> Iterator[LocalBackend]:
        b = LocalBackend(cpus=4, pin="fold")
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()


# -- process chains: outcomes of short commands share the driver's wake-ups -------------------
def _chain(b: LocalBackend, rundir: Path, first: list[str], second: list[str]) -> None:
    """Submit two commands on one slot, the second queued behind the first (prefetched)."""
    a = BackendContract.command_job(b, rundir, 1, first)
    c = BackendContract.command_job(b, rundir, 2, second)
    c.after = 1
    b.submit([a, c])


def _polls(b: LocalBackend, n: int, limit: float = 20.0) -> list[tuple[float, list[int]]]:
    """(seconds since the start, task ids) of each poll that returned outcomes, until n came.
    Each poll may wait 5 s: only a wake-up (or a held outcome falling due) ends it sooner, and
    a poll that ends takes every outcome there is, held or not."""
    t0 = time.monotonic()
    got: list[tuple[float, list[int]]] = []
    while sum(len(ids) for _, ids in got) < n:
        assert time.monotonic() - t0 < limit, f"outcomes missing: {got}"
        out = b.poll(5.0)
        if out:
            got.append((time.monotonic() - t0, [o.task for o in out]))
    return got


@pytest.fixture
def local(rundir: Path) -> Iterator[LocalBackend]:
    b = LocalBackend(cpus=2, pin="fold")
    b.start(rundir)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


def test_a_finished_command_waits_for_the_one_queued_behind_it(
    local: LocalBackend, rundir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "HOLD", 30.0)
    _chain(local, rundir, ["/bin/true"], ["/bin/sh", "-c", "sleep 0.3"])
    assert _polls(local, 2)[0][1] == [1, 2]  # one wake-up for both


def test_a_held_outcome_is_returned_when_its_time_is_up(
    local: LocalBackend, rundir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower takes far longer than expected: the first outcome does not wait for it."""
    monkeypatch.setattr(processes, "HOLD", 0.2)
    _chain(local, rundir, ["/bin/true"], ["/bin/sh", "-c", "sleep 3"])
    polls = _polls(local, 2)
    assert polls[0][1] == [1] and polls[0][0] < 2.5, polls
    assert polls[1][1] == [2]


def test_a_failure_is_never_held(
    local: LocalBackend, rundir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "HOLD", 30.0)
    _chain(local, rundir, ["/bin/false"], ["/bin/sh", "-c", "sleep 3"])
    polls = _polls(local, 2)
    assert polls[0][1] == [1] and polls[0][0] < 2.5, polls
