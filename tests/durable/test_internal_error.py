"""An internal error of the driver (issue 14): written with its traceback to shoal.log, the run
recorded crashed with the reason in the store, status.json and ``shoal status``, and ``shoal
resume`` finishes it with every task done exactly once.

The error is injected into a real run in a subprocess: ``Driver._act`` raises once, when it is
about to hand task CRASH_AT to the backend. One core and no prefetch: one task is in flight at
a time, so at that moment every earlier task has succeeded (and is recorded), and CRASH_AT,
recorded as running, never reached the backend; nothing can have run without the store knowing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

N = 8
CRASH_AT = 5

SCRIPT = textwrap.dedent(
    f"""
    import os, sys
    import shoal
    from shoal.runtime.driver import Driver

    SIDE = os.environ["SHOAL_SIDE"]

    @shoal.task
    def work(i):
        with open(SIDE, "a") as f:  # one line per execution
            f.write(f"{{i}}\\n")
        return i * i

    if __name__ == "__main__":
        act = Driver._act

        def broken(self, acts):
            if any(d.task == {CRASH_AT} for d in acts.dispatch):
                Driver._act = act  # once
                raise RuntimeError("injected internal error")
            act(self, acts)

        Driver._act = broken
        with shoal.Workflow("internal") as wf:
            for i in range({N}):
                work(i)
        wf.run(base=sys.argv[1], cpus=1, prefetch=0)
    """
)


def test_an_internal_error_is_recorded_as_a_crash_and_resume_finishes(tmp_path: Path) -> None:
    script = tmp_path / "internal.py"
    script.write_text(SCRIPT)
    side = tmp_path / "side.txt"
    base = tmp_path / "runs"
    base.mkdir()
    env = {**os.environ, "SHOAL_SIDE": str(side)}
    proc = subprocess.run(
        [sys.executable, str(script), str(base)], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0, proc.stdout
    assert "RuntimeError: injected internal error" in proc.stderr  # the caller sees it too
    (rundir,) = base.glob("internal-*")

    log = (rundir / "shoal.log").read_text()
    assert "internal error of the driver, the run crashed" in log
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: injected internal error" in log
    assert "in broken" in log  # the frame that raised

    reason = "RuntimeError: injected internal error"
    status = json.loads((rundir / "status.json").read_text())
    assert (status["state"], status["reason"]) == ("crashed", reason)
    assert status["counts"]["succeeded"] == CRASH_AT  # the counts of the moment it crashed
    with sqlite3.connect(rundir / "shoal.db") as c:
        meta = {k: json.loads(v) for k, v in c.execute("SELECT key, value FROM meta")}
    assert (meta["state"], meta["crash_reason"]) == ("crashed", reason)

    cli = [sys.executable, "-m", "shoal.cli.main"]
    shown = subprocess.run([*cli, "status", str(rundir)], capture_output=True, text=True)
    assert f"crashed: {reason}" in shown.stdout, shown.stdout + shown.stderr
    assert "shoal resume" in shown.stdout
    as_json = json.loads(
        subprocess.run([*cli, "status", "--json", str(rundir)], capture_output=True).stdout
    )
    assert (as_json["state"], as_json["crash_reason"]) == ("crashed", reason)
    assert Counter(int(x) for x in side.read_text().split()) == Counter(range(CRASH_AT))

    resumed = subprocess.run([*cli, "resume", str(rundir)], env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert Counter(int(x) for x in side.read_text().split()) == Counter(range(N))  # once each
    with sqlite3.connect(rundir / "shoal.db") as c:
        meta = {k: json.loads(v) for k, v in c.execute("SELECT key, value FROM meta")}
        states = Counter(s for (s,) in c.execute("SELECT state FROM tasks"))
        lost = c.execute("SELECT task, attempt FROM attempts WHERE outcome='lost'").fetchall()
    assert (meta["state"], meta["crash_reason"]) == ("succeeded", None)
    assert states == Counter({"succeeded": N})
    assert lost == [(CRASH_AT, 1)]  # recorded running, never handed over: run again
    assert json.loads((rundir / "status.json").read_text())["state"] == "succeeded"
