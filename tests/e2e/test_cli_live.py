"""The command line against live and interrupted runs: queries that agree with each other while a
run goes on, Ctrl-C's exit codes, and requests checked at once.

Every wait here is for a condition (a file a task writes, a state in the store), never a fixed
sleep, so that the tests hold on a loaded machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import shoal
from shoal import Workflow

CLI = [sys.executable, "-m", "shoal.cli.main"]
ENV = dict(os.environ, NO_COLOR="1", COLUMNS="200", TERM="dumb")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120
    )


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait until ``cond()`` holds; the timeout only guards against a hang."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@shoal.task
def hold(marker: str, go: str) -> str:
    """Say it started (``marker``), then wait until the test creates ``go``."""
    Path(marker).write_text("started")
    while not Path(go).exists():
        time.sleep(0.02)
    return "released"


@shoal.task
def one(x: int) -> int:
    return x


# -- 1: shoal tasks --state and shoal status agree during a live run ------------------------------
def test_tasks_by_state_agrees_with_status_during_a_live_run(base: Path, tmp_path: Path) -> None:
    marker, go = tmp_path / "started", tmp_path / "go"
    with Workflow("live") as wf:
        first = hold(str(marker), str(go))
        waiting = [one(i) for i in range(3)]  # ready: they wait for the one core
        after = one(first)  # pending: it waits for `first`
    r = wf.submit(base=base, cpus=1, prefetch=0)
    try:
        wait_for("the first task to start", marker.exists)

        def counts() -> dict[str, int]:
            p = cli("status", str(r.dir), "--json")
            return dict(json.loads(p.stdout)["counts"]) if p.returncode == 0 else {}

        wait_for("status to count 3 ready", lambda: counts().get("ready") == 3)
        assert counts() == {"running": 1, "ready": 3, "pending": 1}
        for state, want in [
            ("ready", [t.id for t in waiting]),
            ("pending", [after.id]),
            ("running", [first.id]),
        ]:
            p = cli("tasks", str(r.dir), "--state", state, "--json")
            assert p.returncode == 0, p.stderr
            assert [t["id"] for t in json.loads(p.stdout)] == want, (state, p.stdout)
        p = cli("tasks", str(r.dir), "--json")
        states = {t["id"]: t["state"] for t in json.loads(p.stdout)}
        assert sorted(states.values()) == ["pending", "ready", "ready", "ready", "running"]
    finally:
        go.write_text("go")
        r.wait()
    assert r.ok
