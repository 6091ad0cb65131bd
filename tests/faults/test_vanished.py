"""A run directory deleted while the run goes on (issue 15, point 3).

``rm -rf RUN`` or ``rm RUN/shoal.db*`` leaves the driver writing into an unlinked database:
before, the run "succeeded" into it and every result was lost, with an error only at the
end. The driver notices within seconds (it compares the open database file and the run
directory with their paths, once a second, off the hot path), stops the running tasks and
says so: a StoreError from ``run.wait()``, on stderr and in the log if it still exists.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

import shoal

from .helpers import hold

DEADLINE = 120.0


@pytest.mark.parametrize("how", ["rundir", "database"])
def test_a_deleted_store_stops_the_run(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started, flag = tmp_path / "started", tmp_path / "flag"
    with shoal.Workflow("vanish") as wf:
        hold(str(started), str(flag))
        [hold.options(name=f"more{i}")(str(started), str(flag)) for i in range(3)]
    base = tmp_path / "runs"
    run = wf.submit(cpus=1, base=base)
    try:
        end = time.monotonic() + DEADLINE
        while not started.exists():
            assert time.monotonic() < end and not run.done
            time.sleep(0.02)
        if how == "rundir":
            shutil.rmtree(run.dir)
        else:
            for p in run.dir.glob("shoal.db*"):
                p.unlink()
        end = time.monotonic() + DEADLINE
        while not run.done and time.monotonic() < end:
            time.sleep(0.05)
        assert run.done, "the driver did not notice that its store was deleted"
    finally:
        flag.touch()
    with pytest.raises(shoal.ShoalError) as info:
        run.wait(DEADLINE)
    text = str(info.value)
    assert "was deleted while the run went on" in text, text
    assert "start it again" in text
    assert "shoal: " in capsys.readouterr().err
    if how == "database":  # the run directory is still there, and so is its log
        log = (run.dir / "shoal.log").read_text()
        assert "was deleted while the run went on" in log
        assert "internal error" not in log
