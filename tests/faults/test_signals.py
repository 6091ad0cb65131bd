"""SIGHUP (the terminal closed, the SSH connection dropped) stops a run gracefully, as
SIGTERM does (issue 15, point 4): before, it killed the driver as kill -9 would, with nothing
in shoal.log. The run is recorded interrupted, ``shoal run`` exits 3 and the log says why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.faults.helpers import SRC

DEADLINE = 120.0

FLOW = textwrap.dedent(
    """
    import os
    import shoal

    HERE = os.path.dirname(os.path.abspath(__file__))

    @shoal.task
    def hold():
        import time
        open(os.path.join(HERE, "started"), "w").close()
        while True:
            time.sleep(0.05)

    if __name__ == "__main__":
        with shoal.Workflow("hup") as wf:
            hold()
        wf.run(cpus=1)
    """
)


def test_sighup_stops_the_run_gracefully(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", PYTHONPATH=SRC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "flow.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + DEADLINE
        while not (tmp_path / "started").exists():
            assert time.monotonic() < end and proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGHUP)
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, (proc.returncode, err)
    (rundir,) = tmp_path.glob("hup-*")
    log = (rundir / "shoal.log").read_text()
    assert "stopped by SIGHUP" in log and "run ended interrupted" in log, log
    assert "shoal resume" in err
