"""The local backend against the conformance suite."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.backends import processes
from shoal.backends.local import LocalBackend

from .conformance import BackendContract


def _started(rundir: Path, cpus: int) -> Iterator[LocalBackend]:
    b = LocalBackend(cpus=cpus, pin="fold")
    b.start(rundir)
    try:
        yield b
    finally:
        b.close()


class TestLocalConformance(BackendContract):
    @pytest.fixture
    def backend(self, rundir: Path) -> Iterator[LocalBackend]:
        yield from _started(rundir, 4)


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
    yield from _started(rundir, 2)


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


@pytest.mark.parametrize(
    ("hold", "first"),
    [(0.2, "/bin/true"), (30.0, "/bin/false")],
    ids=["success-held-until-its-time-is-up", "failure-never-held"],
)
def test_an_outcome_does_not_wait_for_a_slow_follower(
    local: LocalBackend,
    rundir: Path,
    monkeypatch: pytest.MonkeyPatch,
    hold: float,
    first: str,
) -> None:
    """The follower takes far longer than expected (3 s): a success comes back when its hold
    is up, a failure at once; neither waits for the follower."""
    monkeypatch.setattr(processes, "HOLD", hold)
    _chain(local, rundir, [first], ["/bin/sh", "-c", "sleep 3"])
    polls = _polls(local, 2)
    assert polls[0][1] == [1] and polls[0][0] < 2.5, polls
    assert polls[1][1] == [2]
