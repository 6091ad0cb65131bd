"""``shoal resume`` loads the user's own modules (issue 15, point 1).

A script beside its own ``mylib.py`` (tasks, arguments and outputs use it), killed with -9
and resumed from the same directory or from another one, goes on: the run recorded its
import path and working directory, and the resume restores them, for the driver (which
unpickles command arguments and large outputs) and for the workers it starts. When a module
is really gone, the resume refuses up front (exit 2), says what does not load and what to
do, and runs nothing.

The command line is started as the installed ``shoal`` script is (``python bin/shoal``), not
with ``python -m``, which would put the current directory on the import path by chance.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.faults.helpers import SRC

DEADLINE = 120.0

MYLIB = textwrap.dedent(
    """
    class Box:
        def __init__(self, v):
            self.v = v

    def double(b):
        return Box(b.v * 2)
    """
)

FLOW = textwrap.dedent(
    """
    import os
    import shoal
    import mylib

    HERE = os.path.dirname(os.path.abspath(__file__))

    @shoal.task
    def big():
        return {"boxes": [mylib.Box(i) for i in range(20000)], "n": 3}  # over 64 kB

    @shoal.task
    def step(b):
        open(os.path.join(HERE, "started"), "w").close()
        while not os.path.exists(os.path.join(HERE, "GO")):
            import time
            time.sleep(0.02)
        return mylib.double(b).v

    echo = shoal.command("echo {x}")

    if __name__ == "__main__":
        with shoal.Workflow("imports") as wf:
            g = big()
            s = step(mylib.Box(21))
            # rendered by the driver after s: it unpickles g's output, which needs mylib
            echo(x=g.out["n"], after=[s])
            step.options(name="later")(mylib.Box(1))  # waits: its arguments need mylib
        wf.run(cpus=1)
    """
)


def shoal_cli(cwd: Path, *args: str, wait: bool = True) -> subprocess.Popen[str]:
    launcher = cwd.parent / "bin" / "shoal"
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text("import sys\nfrom shoal.cli.main import main\nsys.exit(main())\n")
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", PYTHONPATH=SRC)
    return subprocess.Popen(
        [sys.executable, str(launcher), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _state(db: Path, tid: int) -> str | None:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            row = c.execute("SELECT state FROM tasks WHERE id=?", (tid,)).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def killed_run(tmp_path: Path) -> tuple[Path, Path]:
    """Start the script with ``shoal run`` in its folder, kill the driver with -9 once the
    large output is stored and a task that needs mylib runs; return (folder, run dir)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "mylib.py").write_text(MYLIB)
    (proj / "flow.py").write_text(FLOW)
    proc = shoal_cli(proj, "run", "flow.py")
    end = time.monotonic() + DEADLINE
    rundir = None
    while time.monotonic() < end:
        found = list(proj.glob("imports-*/shoal.db"))
        if found and (proj / "started").exists() and _state(found[0], 0) == "succeeded":
            rundir = found[0].parent
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert rundir is not None, "the run did not get going"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    (proj / "GO").touch()  # the tasks may finish now
    return proj, rundir


@pytest.mark.parametrize("where", ["same", "other"])
def test_resume_loads_the_scripts_own_modules(tmp_path: Path, where: str) -> None:
    proj, rundir = killed_run(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    cwd = proj if where == "same" else other
    proc = shoal_cli(cwd, "resume", str(rundir))
    _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    with sqlite3.connect(f"file:{rundir / 'shoal.db'}?mode=ro", uri=True) as c:
        states = dict(c.execute("SELECT name, state FROM tasks").fetchall())
    assert set(states.values()) == {"succeeded"}, states
    log = (rundir / "shoal.log").read_text()
    if where == "other":
        assert f"working directory {proj}" in log, log


def test_resume_refuses_when_a_module_is_gone(tmp_path: Path) -> None:
    proj, rundir = killed_run(tmp_path)
    (proj / "mylib.py").rename(tmp_path / "mylib.py.away")
    proc = shoal_cli(tmp_path, "resume", str(rundir))
    _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert "do not load" in err and "No module named 'mylib'" in err, err
    assert "PYTHONPATH" in err and str(proj) in err, err
    assert _state(rundir / "shoal.db", 3) != "failed"  # nothing ran, nothing failed
