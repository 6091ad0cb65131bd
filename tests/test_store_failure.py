"""A store that cannot be written mid-run ends the run with a clear error, never corruption."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import psutil
import pytest

import shoal
from shoal.store import writer


def _noop(i: int) -> int:
    return i


def test_failed_commit_ends_the_run_cleanly(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = writer.Writer.commit
    calls = {"n": 0}

    def failing(self: writer.Writer, batch: writer.Batch) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # as SQLite reports a full disk: the transaction is rolled back
            raise shoal.StoreError("writing failed (database or disk is full); rolled back")
        real(self, batch)

    monkeypatch.setattr(writer.Writer, "commit", failing)
    task = shoal.task(_noop)
    with shoal.Workflow("full") as wf:
        for i in range(300):
            task(i)
    with pytest.raises(shoal.StoreError, match="disk is full"):
        wf.run(cpus=2, base=base)
    (rundir,) = base.iterdir()
    db = sqlite3.connect(rundir / "shoal.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT value FROM meta WHERE key='state'").fetchone() == ('"crashed"',)
    # Nothing the run started is left running.
    children = psutil.Process(os.getpid()).children(recursive=True)
    assert not [p for p in children if "shoal.backends.local.worker_main" in " ".join(p.cmdline())]
