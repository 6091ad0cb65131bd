"""Readers that hold a read transaction on shoal.db (issue 15, point 5).

A reader that keeps a snapshot (a notebook between two queries) stops every checkpoint: the
WAL cannot be copied back and grows with the run. The run must go on at full speed (no
checkpoint tried in vain on every commit, no wait for the reader at the end), the log must
say who holds the database and how large the WAL is, checkpoints back off while they cannot
pass and come back when the reader lets go; shoal's own readers hold no transaction.
No timing thresholds: counts of checkpoint tries and what the log says.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

import shoal
from shoal.store import writer
from shoal.store.queries import Reader
from shoal.store.schema import connect
from shoal.store.writer import Writer

DEADLINE = 120.0


def _hold(db: Path) -> sqlite3.Connection:
    """A second connection holding a read transaction (a snapshot) on ``db``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM meta").fetchall()
    return conn


def _autocheckpoint(w: Writer) -> int:
    value: int = w.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    return value


def test_checkpoints_back_off_while_a_reader_blocks_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = Writer(tmp_path)
    log = logging.getLogger("shoal.test.readers")
    w.log = log
    w._every = 0.25
    side = connect(w.path)  # the background thread's connection, driven by hand here
    w.set_meta(x=0)
    reader = _hold(w.path)
    delays = []
    with caplog.at_level(logging.INFO, logger=log.name):
        for i in range(8):
            w.set_meta(x=i + 1)  # a commit after the reader's snapshot
            delays.append(w._checkpoint_step(side))
            w.housekeep()
        said = [r.getMessage() for r in caplog.records]
        blocked = [m for m in said if "holds a read transaction" in m]
        # Each try that cannot pass doubles the wait, up to BACKOFF: tries within any time
        # are logarithmic, not four a second.
        assert delays == [min(0.25 * 2**k, writer.BACKOFF) for k in range(1, 9)]
        assert w.checkpoints == 8 and w.blocked == 8
        # The writer's own checkpoint on each commit is off while they cannot pass.
        assert _autocheckpoint(w) == 0 and not w.auto
        # Said once (the WAL did not double), with its size and who holds the database.
        assert len(blocked) == 1, blocked
        assert f"pid {os.getpid()} (this process)" in blocked[0]
        assert "MB now" in blocked[0]
        reader.execute("COMMIT")
        reader.close()
        assert w._checkpoint_step(side) == 0.25  # passes: back to the normal pace
        w.housekeep()
        assert _autocheckpoint(w) == writer.AUTO and w.auto
        assert any("pass again" in r.getMessage() for r in caplog.records)
    side.close()
    w.close()


def test_a_reader_holding_a_transaction_neither_stops_nor_slows_a_run(tmp_path: Path) -> None:
    flag = tmp_path / "go"

    @shoal.task
    def quick(i: int) -> int:
        return i

    @shoal.task
    def gate(path: str) -> str:
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.05)
        return "open"

    with shoal.Workflow("readers") as wf:
        outs = [quick(i) for i in range(300)]
        g = gate(str(flag))
    run = wf.submit(cpus=2, base=tmp_path)
    db = run.dir / "shoal.db"
    reader = _hold(db)
    log = run.dir / "shoal.log"
    try:
        end = time.monotonic() + DEADLINE
        while "holds a read transaction" not in log.read_text() and time.monotonic() < end:
            assert not run.done, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert "holds a read transaction" in text, text
        assert "MB now" in text and f"pid {os.getpid()}" in text
    finally:
        reader.execute("COMMIT")
        reader.close()
        flag.touch()
    run.wait(DEADLINE)
    assert run.done and run.state == "succeeded", log.read_text()
    assert run.result(g) == "open" and run.result(outs[-1]) == 299
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # copied back at the end


def test_shoal_readers_hold_no_transaction_between_queries(tmp_path: Path) -> None:
    @shoal.task
    def one(i: int) -> int:
        return i

    with shoal.Workflow("quiet") as wf:
        ts = [one(i) for i in range(5)]
    run = wf.run(cpus=1, base=tmp_path)
    with Reader(run.dir) as r:  # every question, then the reader stays open
        r.meta()
        r.counts()
        r.nodes()
        r.tasks()
        r.tasks(state="pending", limit=1)
        r.find(0)
        r.attempts(0)
        r.story(0)
        r.running()
        r.rules()
        r.failures()
        r.result(0)
        assert not r.conn.in_transaction
        w = connect(run.dir / "shoal.db")
        w.execute("INSERT INTO meta VALUES ('probe', '1')")  # a commit after those reads
        _, frames, done = w.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames == done, (frames, done)  # nothing the Reader holds stops it
        w.close()
    assert run.result(ts[-1]) == 4
