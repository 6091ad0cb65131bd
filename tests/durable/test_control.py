"""Retry policies, deadlines, the driver lock, requests to a live or stopped run, reruns, and
the file-system warning, end to end with real processes."""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import Workflow
from shoal.store.fs import advice, fstype


def flaky_counter(path: str, fail_times: int, error: str = "ValueError") -> Any:
    """A task that fails ``fail_times`` times (counted in a file), then succeeds."""

    @shoal.task(name="flaky")
    def flaky(x: int) -> int:
        with open(path, "a") as f:
            f.write("x\n")
        n = len(Path(path).read_text().split())
        if n <= fail_times:
            if error == "exit":
                os._exit(3)
            raise {"ValueError": ValueError, "MemoryError": MemoryError}[error](f"try {n}")
        return x * 10

    return flaky


def attempts(rundir: Path, task: int = 0) -> list[tuple[Any, ...]]:
    with sqlite3.connect(rundir / "shoal.db") as c:
        return c.execute(
            "SELECT attempt, outcome, kind, started, ended FROM attempts WHERE task=?"
            " ORDER BY attempt",
            (task,),
        ).fetchall()


# -- retry policies --
def test_retries_with_a_fixed_back_off(base: Path, tmp_path: Path) -> None:
    f = flaky_counter(str(tmp_path / "n"), 2)
    with Workflow("retry") as wf:
        t = f.options(retries=3, backoff=0.3)(4)
    run = wf.run(base=base, cpus=2)
    assert run.ok and run.result(t) == 40
    rows = attempts(run.dir)
    assert [(a, o) for a, o, *_ in rows] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    for prev, nxt in itertools.pairwise(rows):
        assert nxt[3] - prev[4] >= 0.3 - 0.01, "the back-off was not waited out"
    with sqlite3.connect(run.dir / "shoal.db") as c:
        story = [r[0] for r in c.execute("SELECT new FROM transitions WHERE task=0 ORDER BY seq")]
    assert story.count("retrying") == 2


def test_retry_on_selects_exception_types_and_runs_out(base: Path, tmp_path: Path) -> None:
    f = flaky_counter(str(tmp_path / "a"), 5, "ValueError")
    g = flaky_counter(str(tmp_path / "b"), 1, "MemoryError")
    with Workflow("retry-on") as wf:
        a = f.options(name="a", retries=2, retry_on=["MemoryError"])(1)  # not retried
        b = g.options(name="b", retries=2, retry_on=["MemoryError"])(2)  # retried once
    run = wf.run(base=base, cpus=2)
    with pytest.raises(shoal.TaskFailed, match="ValueError"):
        run.result(a)
    assert run.result(b) == 20
    assert len(attempts(run.dir, a.id)) == 1 and len(attempts(run.dir, b.id)) == 2  # type: ignore[arg-type]


def test_exponential_back_off_escalates_the_timeout_and_shoal_tasks_shows_attempts(
    base: Path,
) -> None:
    @shoal.task
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    with Workflow("escalate") as wf:
        t = slow.options(
            timeout=0.2,
            retries=3,
            backoff={"delay": 0.05, "factor": 2},
            retry_on="timeout",
            escalate={"timeout": 2.0},
        )(0.5)
    run = wf.run(base=base, cpus=2)
    assert run.ok and run.result(t) == 0.5
    rows = attempts(run.dir)
    assert [k for _, _, k, *_ in rows] == ["timeout", "timeout", None]  # 0.2 s, 0.4 s, 0.8 s
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "tasks", str(run.dir)],
        capture_output=True,
        text=True,
    )
    assert "attempts 3 (timeout, timeout, succeeded)" in out.stdout, out.stdout


def test_a_run_wide_retry_policy_applies_to_tasks_without_one(base: Path, tmp_path: Path) -> None:
    f = flaky_counter(str(tmp_path / "n"), 1)
    with Workflow("default") as wf:
        t = f(7)
    run = wf.run(base=base, cpus=2, retries=1)
    assert run.result(t) == 70 and len(attempts(run.dir)) == 2


def test_bad_retry_options_are_refused() -> None:
    with pytest.raises(shoal.DefinitionError, match="retries must be a whole number"):
        shoal.task(lambda: 1, retries=-1)
    with pytest.raises(shoal.DefinitionError, match="backoff='linear'"):
        shoal.task(lambda: 1, retries=1, backoff="linear")
    with pytest.raises(shoal.DefinitionError, match="escalate takes 'timeout' and 'memory'"):
        shoal.task(lambda: 1, retries=1, escalate={"cpus": 2})
    with pytest.raises(shoal.DefinitionError, match="retry_on takes kinds"):
        shoal.task(lambda: 1, retries=1, retry_on=[1.5])


# -- deadline and lock --
@shoal.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_deadline_stops_the_run_and_resume_carries_on(base: Path) -> None:
    with Workflow("deadline") as wf:
        for _ in range(20):
            nap(0.2)
    run = wf.run(base=base, cpus=2, stop_at=time.time() + 1.0, stop_mode="finish", prefetch=0)
    assert run.state == "interrupted" and not run.ok
    counts = run.status()["counts"]
    assert counts.get("succeeded", 0) < 20 and "failed" not in counts
    log = (run.dir / "shoal.log").read_text()
    assert "the deadline" in log and "shoal resume" in log
    again = shoal.resume(run.dir)
    assert again.ok and again.status()["counts"] == {"succeeded": 20}


def test_a_second_driver_is_refused_naming_the_owner(base: Path) -> None:
    with Workflow("locked") as wf:
        nap(1.0)
    r = wf.submit(base=base, cpus=2)
    time.sleep(0.3)
    with pytest.raises(shoal.StoreError, match=rf"pid {os.getpid()} on .*alive") as info:
        shoal.resume(r.dir)
    # It says how to stop a driver (shoal cancel stops tasks, not drivers).
    assert f"kill -TERM {os.getpid()}" in str(info.value) and "Ctrl-C" in str(info.value)
    assert "shoal cancel" not in str(info.value)
    r.wait()
    assert r.ok


# -- requests --
@shoal.task
def square(x: int) -> int:
    return x * x


def test_submit_to_a_live_run_is_taken_within_a_second(base: Path) -> None:
    with Workflow("live") as wf:
        nap(1.5)
    r = wf.submit(base=base, cpus=2)
    time.sleep(0.3)
    a = shoal.attach(r.dir)
    assert a.live
    rid = a.submit(square(3))
    answer = a.answer(rid, timeout=10)  # taken within EVERY (0.2 s) of the next loop pass
    assert answer is not None and "1 task(s) added: #1-#1" in answer
    r.wait()
    assert r.result(1) == 9
    with sqlite3.connect(r.dir / "shoal.db") as c:
        (origin,) = c.execute("SELECT origin FROM tasks WHERE id=1").fetchone()
    assert origin.startswith("submitted by pid")


def test_submitted_tasks_can_use_outputs_of_the_run(base: Path) -> None:
    with Workflow("refs") as wf:
        seed = square(4)
        nap(1.0)
    r = wf.submit(base=base, cpus=2)
    time.sleep(0.3)
    a = shoal.attach(r.dir)
    rid = a.submit(square(a.ref(seed.id)))  # type: ignore[arg-type]
    assert "added" in (a.answer(rid, timeout=5) or "")
    r.wait()
    assert r.result(2) == 256


def test_cli_retry_rerun_and_cancel_on_a_stopped_run(base: Path, tmp_path: Path) -> None:
    f = flaky_counter(str(tmp_path / "n"), 1)
    with Workflow("manual") as wf:
        bad = f(1)
        after = square(bad)
        ok = square(5)
        later = square(ok)
    run = wf.run(base=base, cpus=2)
    assert run.state == "failed"
    cli = [sys.executable, "-m", "shoal.cli.main"]
    out = subprocess.run([*cli, "retry", str(run.dir), "--failed"], capture_output=True, text=True)
    assert out.returncode == 0 and "queued" in out.stdout and "shoal resume" in out.stdout
    out = subprocess.run(
        [*cli, "rerun", str(ok.id), "--run", str(run.dir), "--downstream"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    done = subprocess.run([*cli, "resume", str(run.dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert shoal.Run(run.dir, "manual").result(after.id) == 100  # type: ignore[arg-type]
    assert len(attempts(run.dir, ok.id)) == 2 and len(attempts(run.dir, later.id)) == 2  # type: ignore[arg-type]
    with sqlite3.connect(run.dir / "shoal.db") as c:
        answers = [r[0] for r in c.execute("SELECT answer FROM requests ORDER BY id")]
    assert answers[0] == "1 task(s) retried"
    assert answers[1].startswith(f"task #{ok.id} runs again with its downstream")


def test_cancel_a_live_run_by_tag(base: Path) -> None:
    with Workflow("cancel") as wf:
        for _ in range(8):
            nap.options(tags="slow")(1.0)
    r = wf.submit(base=base, cpus=2, prefetch=0)
    time.sleep(0.4)
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "cancel", "--tag", "slow", "--run", str(r.dir)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "task(s) cancelled" in out.stdout, out.stdout + out.stderr
    r.wait()
    counts = r.status()["counts"]
    assert counts.get("cancelled", 0) >= 2, counts
    with sqlite3.connect(r.dir / "shoal.db") as c:
        stopped = c.execute(
            "SELECT COUNT(*) FROM attempts WHERE kind='cancelled' AND error LIKE '%stopped'"
        ).fetchone()[0]
    assert stopped >= 1, "running tasks were stopped, not waited for"


def test_shoal_submit_adds_a_script_s_workflows(base: Path, tmp_path: Path) -> None:
    with Workflow("cli-submit") as wf:
        square(2)
    run = wf.run(base=base, cpus=2)
    script = tmp_path / "more.py"
    script.write_text(
        "import os, shoal\n"
        "@shoal.task\n"
        "def cube(x):\n"
        "    return x ** 3\n"
        "ref = shoal.attach(os.environ['SHOAL_RUN_DIR']).ref(0)\n"
        "with shoal.Workflow('more') as more:\n"
        "    cube(ref)\n"
    )
    cli = [sys.executable, "-m", "shoal.cli.main"]
    out = subprocess.run(
        [*cli, "submit", str(run.dir), str(script)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "queued" in out.stdout, out.stderr
    done = subprocess.run([*cli, "resume", str(run.dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert shoal.Run(run.dir, "x").result(1) == 64


# -- file systems --
def test_network_file_systems_are_detected_with_a_fix(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda1 / ext4 rw 0 0\n"
        f"server:/export {tmp_path}/shared nfs4 rw,relatime 0 0\n"
        f"lfs@o2ib:/scratch {tmp_path}/lustre lustre rw 0 0\n"
    )
    assert fstype(tmp_path / "shared" / "run", str(mounts)) == "nfs4"
    assert fstype(tmp_path / "lustre", str(mounts)) == "lustre"
    assert fstype(tmp_path / "local", str(mounts)) == "ext4"
    text = advice(tmp_path / "shared" / "run", str(mounts))
    assert text is not None and "nfs4" in text and "state_dir=" in text
    assert advice(tmp_path / "local", str(mounts)) is None


class Walker(shoal.Strategy):
    """Submits one task at a time; counts results in its memory and in an attribute."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def on_start(self, ctl: shoal.Controller) -> None:
        ctl.submit(nap(0.15))

    def on_result(self, event: shoal.Event, ctl: shoal.Controller) -> None:
        self.seen += 1
        ctl.memory["seen"] = ctl.memory.get("seen", 0) + 1
        if self.seen < self.n:
            ctl.submit(nap(0.15))

    def done(self, ctl: shoal.Controller) -> bool:
        return self.seen >= self.n


def test_rules_and_strategies_come_back_with_their_memory(base: Path) -> None:
    wf = Workflow("memory")
    wf.add(Walker(8))
    calls: list[int] = []

    @wf.on("task-succeeded")
    def count(event: shoal.Event, ctl: shoal.Controller) -> None:
        ctl.memory["n"] = ctl.memory.get("n", 0) + 1
        calls.append(1)

    run = wf.run(base=base, cpus=2, stop_at=time.time() + 0.6, stop_mode="finish")
    assert run.state == "interrupted"
    before = run.memory("Walker").get("seen", 0)
    assert before < 8 and run.memory("count").get("n", 0) == before
    again = shoal.resume(run.dir)
    assert again.ok
    assert again.memory("Walker")["seen"] == 8, "the strategy went on where it stopped"
    assert again.memory("count")["n"] == 8, "the rule's memory was restored"
    assert again.status()["total"] == 8, "no task was submitted twice"


def test_time_left_stops_before_the_allocation_ends(base: Path, tmp_path: Path) -> None:
    script = tmp_path / "long.py"
    script.write_text(
        "import sys, time, shoal\n"
        "@shoal.task\n"
        "def nap(s):\n"
        "    time.sleep(s)\n"
        "with shoal.Workflow('long') as wf:\n"
        "    for i in range(20):\n"
        "        nap(0.2)\n"
        "wf.run(base=sys.argv[1], cpus=2)\n"
    )
    env = {**os.environ, "SHOAL_END_TIME": str(time.time() + 60 + 1.0)}  # ends in 61 s
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "run", "--time-left", "1", str(script), str(base)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 3, out.stderr
    (rundir,) = base.glob("long-*")
    assert "the deadline" in (rundir / "shoal.log").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "run", "--time-left", "1", str(script), str(base)],
        capture_output=True,
        text=True,
        env={
            k: v for k, v in os.environ.items() if k not in ("SHOAL_END_TIME", "SLURM_JOB_END_TIME")
        },
    )
    assert bad.returncode == 2 and "--time-left needs the allocation's end" in bad.stderr


def test_estimates_are_stored_and_come_back_on_resume(base: Path) -> None:
    """The estimate orders ready tasks; a resumed run must order them the same way."""
    from shoal.store.recover import load

    with Workflow("est") as wf:
        quick = shoal.task(_noop, estimate=2.5)()
        plain = shoal.task(_noop)()
    run = wf.run(base=base, cpus=1)
    assert run.ok
    records = {r.id: r for r in load(run.dir).plan.records}
    assert records[quick.id].options.estimate == 2.5
    assert records[plain.id].options.estimate is None


def _noop() -> None:
    return None
