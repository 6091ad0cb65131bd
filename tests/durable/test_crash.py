"""Crash consistency: SIGKILL the driver at random points of a 5,000-task run, 20 times,
resuming after each kill. Nothing is lost, nothing that succeeded runs again, and the store
stays intact."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

N = 5000
KILLS = 20

SCRIPT = textwrap.dedent(
    f"""
    import os, sys, time
    import shoal

    SIDE = os.environ["SHOAL_SIDE"]

    @shoal.task
    def work(i):
        # an append-only side effect: one line per execution
        fd = os.open(SIDE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{{i}}\\n".encode())
        os.close(fd)
        time.sleep(0.004)
        return i * i

    if __name__ == "__main__":
        if sys.argv[1] == "start":
            with shoal.Workflow("crash") as wf:
                for i in range({N}):
                    work(i)
            wf.run(base=sys.argv[2], cpus=2)
        else:
            shoal.resume(sys.argv[2])
    """
)


def counts(side: Path) -> Counter[int]:
    if not side.exists():
        return Counter()
    return Counter(int(x) for x in side.read_text().split())


def wait_for_resumes(rundir: Path, at_least: int, timeout: float = 120) -> None:
    """Until the run has recorded ``at_least`` resumes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(rundir / "shoal.db", timeout=5) as c:
                row = c.execute("SELECT value FROM meta WHERE key='resumes'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is not None and int(row[0]) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not record {at_least} resumes within {timeout} s")


def succeeded(rundir: Path) -> set[int]:
    with sqlite3.connect(f"file:{rundir / 'shoal.db'}?mode=ro", uri=True) as c:
        return {r[0] for r in c.execute("SELECT id FROM tasks WHERE state='succeeded'")}


def test_kill_minus_nine_twenty_times_and_resume(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT)
    side = tmp_path / "side.txt"
    base = tmp_path / "runs"
    base.mkdir()
    env = {**os.environ, "SHOAL_SIDE": str(side)}
    rng = random.Random(20261201)

    def start(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(script), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    proc = start("start", str(base))
    rundir: Path | None = None
    kills = 0
    checks: list[tuple[set[int], Counter[int]]] = []
    while kills < KILLS:
        t0 = time.monotonic()
        while rundir is None and time.monotonic() - t0 < 30:  # wait for the run directory
            found = list(base.glob("crash-*/status.json"))
            rundir = found[0].parent if found else None
            time.sleep(0.01)
        assert rundir is not None, "the first driver never created its run directory"
        if kills % 2:  # every other kill lands once the resumed driver has recorded itself:
            wait_for_resumes(rundir, (kills + 1) // 2)  # on a loaded machine a start is slow
        time.sleep(rng.uniform(0.2, 0.7))
        if proc.poll() is not None:  # it ended before this kill: it must have finished
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        checks.append((succeeded(rundir), counts(side)))
        proc = start("resume", str(rundir))
    assert kills == KILLS, f"the run finished after only {kills} kills: make it longer"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert rundir is not None

    # every task succeeded, with the results of an uninterrupted run
    with sqlite3.connect(rundir / "shoal.db") as c:
        states = Counter(r[0] for r in c.execute("SELECT state FROM tasks"))
        import pickle

        results = {t: pickle.loads(v) for t, v in c.execute("SELECT task, value FROM results")}
        (integrity,) = c.execute("PRAGMA integrity_check").fetchone()
        lost = c.execute("SELECT COUNT(*) FROM attempts WHERE outcome='lost'").fetchone()[0]
        resumes = c.execute("SELECT value FROM meta WHERE key='resumes'").fetchone()[0]
        # Each attempt number is handed out once (a task queued at a kill must not get the
        # number of its lost attempt again), and each has its row in attempts.
        reused = c.execute(
            "SELECT task, attempt FROM transitions WHERE new IN ('queued', 'running')"
            " AND old != 'queued' GROUP BY task, attempt HAVING COUNT(*) > 1 LIMIT 5"
        ).fetchall()
        numbered = c.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT task, attempt FROM transitions"
            " WHERE attempt > 0)"
        ).fetchone()[0]
        rows = c.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    assert states == {"succeeded": N}
    assert results == {i: i * i for i in range(N)}
    assert integrity == "ok"
    # a driver killed while it started may not have recorded itself yet
    assert KILLS // 2 <= int(resumes) <= KILLS
    assert lost > 0, "some kills should have caught attempts in flight"
    assert not reused, f"attempt numbers handed out twice (task, attempt): {reused}"
    assert numbered == rows, f"{numbered} attempts in the transitions, {rows} rows of them"
    assert b"Logging error" not in err, err.decode()[-3000:]

    # no task recorded as succeeded at a kill ran again afterwards
    final = counts(side)
    for done, before in checks:
        again = [t for t in done if final[t] != before[t]]
        assert not again, f"tasks {again[:10]} ran again after they were recorded as succeeded"
    assert set(final) == set(range(N))


@pytest.mark.parametrize("mode", ["cancel", "finish"])
def test_sigterm_stops_gracefully_and_resume_finishes(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "slow.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            import shoal

            @shoal.task
            def nap(i):
                time.sleep(0.3)
                return i

            with shoal.Workflow("slow") as wf:
                for i in range(12):
                    nap(i)
            wf.run(base=sys.argv[1], cpus=2, stop_mode={mode!r})
            """
        )
    )
    base = tmp_path / "runs"
    base.mkdir()
    cli = [sys.executable, "-m", "shoal.cli.main"]
    proc = subprocess.Popen([*cli, "run", str(script), str(base)], stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not list(base.glob("slow-*/status.json")) and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    time.sleep(0.8)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err.decode()
    (rundir,) = base.glob("slow-*")
    with sqlite3.connect(rundir / "shoal.db") as c:
        state = c.execute("SELECT value FROM meta WHERE key='state'").fetchone()[0]
        kinds = Counter(r[0] for r in c.execute("SELECT state FROM tasks"))
    assert state == '"interrupted"'
    assert "running" not in kinds and kinds["succeeded"] < 12
    assert "failed" not in kinds and "cancelled" not in kinds, "a graceful stop fails nothing"
    log = (rundir / "shoal.log").read_text()
    assert "stopped by SIGTERM" in log and "shoal resume" in log
    script.unlink()  # the functions come from the copy stored with the run
    done = subprocess.run([*cli, "resume", str(rundir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(rundir / "shoal.db") as c:
        assert c.execute("SELECT COUNT(*) FROM tasks WHERE state='succeeded'").fetchone()[0] == 12


def test_a_node_local_state_dir_survives_losing_the_node(tmp_path: Path) -> None:
    script = tmp_path / "local.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            import shoal

            @shoal.task
            def work(i):
                time.sleep(0.01)
                return i + 1

            with shoal.Workflow("local") as wf:
                for i in range(400):
                    work(i)
            wf.run(base=sys.argv[1], cpus=2, state_dir=sys.argv[2])
            """
        )
    )
    base, local = tmp_path / "runs", tmp_path / "node-local"
    base.mkdir()
    env = {**os.environ, "SHOAL_COPY_EVERY": "0.3"}
    proc = subprocess.Popen([sys.executable, str(script), str(base), str(local)], env=env)
    t0 = time.monotonic()
    while not list(base.glob("local-*/shoal.db")) and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    (rundir,) = base.glob("local-*")
    assert (local / rundir.name / "shoal.db").exists(), "the live store is on the local disk"
    time.sleep(1.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    copied = succeeded(rundir)
    assert copied, "the run directory holds a recent copy"
    import shutil

    shutil.rmtree(local)  # the node is gone, with its disk
    import shoal

    run = shoal.resume(rundir)  # the stored options bring state_dir back
    assert run.ok and run.status()["counts"] == {"succeeded": 400}
    assert (local / rundir.name / "shoal.db").exists()
    with sqlite3.connect(rundir / "shoal.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 400
    assert run.result(399) == 400


def test_resume_after_a_kill_keeps_the_gates_of_responses(tmp_path: Path) -> None:
    """A Response with add= and detour= (and a replacement), killed while the added work
    runs: after resume the dependents still wait for the detour, the added task for
    nothing, and everything ends correct."""
    script = tmp_path / "gates.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            import shoal

            @shoal.task
            def slow(v):
                time.sleep(1.5)
                return v + 1

            @shoal.task
            def tenfold(v):
                return v * 10

            @shoal.task
            def child(v):
                return ("child", v)

            @shoal.task
            def head():
                added = slow(shoal.current().out)
                return shoal.Response(output=1, add=[added], detour=[tenfold(added)])

            @shoal.task
            def loop(n):
                time.sleep(0.3)
                return shoal.Response(output=n, replace=loop(n + 1)) if n < 4 else n

            if __name__ == "__main__":
                if sys.argv[1] == "start":
                    with shoal.Workflow("gates") as wf:
                        child(head())
                        child(loop(0))
                    wf.run(base=sys.argv[2], cpus=2)
                else:
                    shoal.resume(sys.argv[2])
            """
        )
    )
    base = tmp_path / "runs"
    base.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), "start", str(base)])
    t0 = time.monotonic()
    while not list(base.glob("gates-*/status.json")) and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    time.sleep(1.0)  # the added task sleeps, the loop has replaced itself a few times
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (rundir,) = base.glob("gates-*")
    done = subprocess.run(
        [sys.executable, str(script), "resume", str(rundir)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    import shoal

    run = shoal.Run(rundir, "gates")
    assert run.status()["counts"] == {"succeeded": run.status()["total"]}
    assert run.result(1) == ("child", 1)  # the head's own output, after its detour
    assert run.result(3) == ("child", 4)  # the loop's last replacement
    assert run.result("slow") == 2 and run.result("tenfold") == 20
