"""The command line against live and interrupted runs: queries that agree with each other while a
run goes on, Ctrl-C's exit codes, and requests checked at once.

Every wait here is for a condition (a file a task writes, a state in the store), never a fixed
sleep, so that the tests hold on a loaded machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
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


# -- 2, 3: Ctrl-C ---------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path

import shoal


@shoal.task
def hold(marker):
    Path(marker).write_text("started")
    time.sleep(600)
    return 1


with shoal.Workflow("ctrlc") as wf:
    x = hold(sys.argv[1])

if __name__ == "__main__":
    run = wf.run(base=sys.argv[2], cpus=1)
    print(run.result(x))
"""


def start_and_interrupt(argv: list[str], marker: Path, cwd: Path) -> subprocess.Popen[str]:
    """Start ``argv``, wait until its task runs, and press Ctrl-C once (SIGINT)."""
    p = subprocess.Popen(
        argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for("the task to start", lambda: marker.exists() or p.poll() is not None)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
    except BaseException:
        p.kill()
        raise
    return p


def test_a_result_of_an_interrupted_run_exits_3_from_python_and_from_shoal_run(
    tmp_path: Path,
) -> None:
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(HOLD))
    runs = tmp_path / "runs"
    for argv in ([sys.executable, str(script)], [*CLI, "run", str(script)]):
        marker = tmp_path / "started"
        marker.unlink(missing_ok=True)
        p = start_and_interrupt([*argv, str(marker), str(runs)], marker, tmp_path)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 3, (argv, p.returncode, out, err)
        assert "Call run.wait() first" not in err and "shoal resume" in err, err
        assert "Traceback" not in err, err


def test_a_second_ctrl_c_under_resume_exits_130_like_run(tmp_path: Path) -> None:
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(HOLD))
    runs, marker = tmp_path / "runs", tmp_path / "started"
    p = start_and_interrupt([sys.executable, str(script), str(marker), str(runs)], marker, tmp_path)
    p.communicate(timeout=120)
    assert p.returncode == 3
    (rundir,) = runs.iterdir()
    marker.unlink()
    log = rundir / "shoal.log"
    # --stop-mode finish: after the first Ctrl-C the driver waits for the running task, so the
    # second one finds it still running.
    p = start_and_interrupt(
        [*CLI, "resume", str(rundir), "--stop-mode", "finish"], marker, tmp_path
    )
    try:
        wait_for(
            "the first Ctrl-C to be taken", lambda: log.read_text().count("nothing new starts") == 2
        )
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, (p.returncode, out, err)
    assert "Aborted!" not in err and "interrupted" in err, err


# -- 5: tasks the user cancelled do not fail the run ----------------------------------------------
CANCEL = """
import sys, time
from pathlib import Path

import shoal


@shoal.task
def hold(marker):
    Path(marker).write_text("started")
    time.sleep(600)


@shoal.task
def one(x):
    return x


with shoal.Workflow("cancel") as wf:
    first = hold.options(name="hold")(sys.argv[1])
    one(first)  # cancelled with it
    one(2)

run = wf.run(base=sys.argv[2], cpus=2)
print("STATE", run.state, run.ok)
"""


def test_a_run_whose_user_cancelled_a_task_succeeds(tmp_path: Path) -> None:
    script, runs, marker = tmp_path / "cancel.py", tmp_path / "runs", tmp_path / "started"
    script.write_text(textwrap.dedent(CANCEL))
    p = subprocess.Popen(
        [*CLI, "run", str(script), str(marker), str(runs)],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the task to start", lambda: marker.exists() or p.poll() is not None)
        (rundir,) = runs.iterdir()
        c = cli("cancel", "hold", "--run", str(rundir), "--wait", "60")
        assert c.returncode == 0 and "1 task(s) cancelled" in c.stdout, c.stdout + c.stderr
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, (out, err)
    assert "STATE succeeded True" in out, out
    st = json.loads(cli("status", str(rundir), "--json").stdout)
    assert st["state"] == "succeeded" and st["counts"] == {"cancelled": 2, "succeeded": 1}


def test_tasks_a_rule_cancels_do_not_fail_the_run(base: Path, tmp_path: Path) -> None:
    marker, go = tmp_path / "started", tmp_path / "never"
    with Workflow("rule-cancel") as wf:
        first = hold(str(marker), str(go))
        one(first)  # cancelled with it
        other = one(2)

    @wf.on("task-started", name="hold")
    def stop_it(event: shoal.Event, ctl: shoal.Controller) -> None:
        ctl.cancel(event.task)

    run = wf.run(base=base, cpus=2)
    assert run.state == "succeeded" and run.ok, run.status()
    assert run.result(other) == 2
    assert run.status()["counts"] == {"cancelled": 2, "succeeded": 1}


# -- 6: retry, rerun and cancel check what they can at once ---------------------------------------
@shoal.task
def bad() -> int:
    raise ValueError("bad on purpose")


def requests_in(rundir: Path) -> int:
    import sqlite3

    with sqlite3.connect(rundir / "shoal.db") as c:
        return int(c.execute("SELECT count(*) FROM requests").fetchone()[0])


def test_requests_that_cannot_be_carried_out_exit_2_at_once(base: Path) -> None:
    with Workflow("requests") as wf:
        ok = one(1)
        failed = bad()
        down = one(failed)
    run = wf.run(base=base, cpus=2)
    d = str(run.dir)
    refused = [
        (["retry", d, "99"], "no task 99"),
        (["retry", d, str(ok.id)], "it is succeeded; only failed or cancelled"),
        (["retry", d, str(down.id)], "upstream"),
        (["retry", d, "--tag", "nope"], "no failed or cancelled tasks tagged 'nope'"),
        (["rerun", "99", "--run", d], "no task 99"),
        (["cancel", str(ok.id), "--run", d], "it already ended succeeded"),
        (["cancel", "nosuchname", "--run", d], "no task 'nosuchname'"),
        (["cancel", "--tag", "nope", "--run", d], "no unfinished task is tagged 'nope'"),
    ]
    for args, why in refused:
        p = cli(*args)
        assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
        assert why in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    assert requests_in(run.dir) == 0, "a refused request was queued"

    # A stopped run keeps a valid request; resuming carries it out and says so.
    p = cli("retry", d, str(failed.id))
    assert p.returncode == 0 and "queued" in p.stdout, p.stdout + p.stderr
    p = cli("resume", d)
    assert p.returncode == 1, p.stderr  # it fails again
    assert "request 1 (retry), queued while no driver ran: 1 task(s) retried" in p.stderr
    assert "request 1 (retry)" in (run.dir / "shoal.log").read_text()


def test_a_request_the_live_driver_refuses_exits_2(base: Path, tmp_path: Path) -> None:
    marker, go = tmp_path / "started", tmp_path / "go"
    with Workflow("refused") as wf:
        first = one(1)
        hold(str(marker), str(go)).after(first)
    r = wf.submit(base=base, cpus=2)
    try:
        wait_for("the task to start", marker.exists)
        p = cli("rerun", str(first.id), "--run", str(r.dir), "--wait", "60")
        assert p.returncode == 2, p.stdout + p.stderr
        assert "refused" in p.stderr and "depends on it is running" in p.stderr, p.stderr
    finally:
        go.write_text("go")
        r.wait()
