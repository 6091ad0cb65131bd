"""The SQLite schema of ``shoal.db`` and the connection settings both sides use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shoal.errors import StoreError

VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, cores TEXT NOT NULL, gpus TEXT NOT NULL,
    memory INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS functions(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    function INTEGER,
    template TEXT,
    payload BLOB NOT NULL,
    has_refs INTEGER NOT NULL,
    deps TEXT NOT NULL,
    options TEXT NOT NULL,
    workdir TEXT,
    env TEXT,
    tags TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    updated REAL,
    origin TEXT,     -- who added it: the workflow, a Response of task N, a rule or a strategy
    alias INTEGER,   -- replaced (Response replace=) by this task: its output stands for ours
    gate TEXT);      -- JSON ids its dependents also wait for (Response detour= / replace=)
-- No index on tasks(state): every state change would update it twice, and the questions it
-- would serve (counts, failures, running tasks) are asked rarely; a scan of a million rows is
-- a fraction of a second.
-- Nor on tasks(name) or transitions(task): together they cost 15% of W1's commit time
-- (measured, 2026-12-01), and the questions they serve (a task by name, one task's story, for
-- `shoal logs`) are asked by a person, rarely; on a million-task run the scan takes a second.
CREATE TABLE IF NOT EXISTS attempts(
    task INTEGER NOT NULL, attempt INTEGER NOT NULL,
    placement TEXT, dispatched REAL, started REAL, ended REAL,
    outcome TEXT, kind TEXT, exit_code INTEGER, error TEXT, worker TEXT,
    PRIMARY KEY(task, attempt)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transitions(
    seq INTEGER PRIMARY KEY, task INTEGER NOT NULL, attempt INTEGER NOT NULL,
    old TEXT, new TEXT NOT NULL, time REAL NOT NULL, reason TEXT, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rules(
    label TEXT PRIMARY KEY, trigger TEXT NOT NULL, calls INTEGER NOT NULL, errors INTEGER NOT NULL,
    seconds REAL NOT NULL, slowest REAL NOT NULL, last_error TEXT, memory BLOB,
    position INTEGER NOT NULL DEFAULT 0,
    payload BLOB);   -- the rule, or the strategy object as of its last call (cloudpickle)
-- Requests from other processes (shoal retry/rerun/cancel/submit, shoal.attach): the driver
-- takes them within a second; a stopped run takes them when it resumes.
CREATE TABLE IF NOT EXISTS requests(
    id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, payload BLOB NOT NULL,
    taken REAL, answer TEXT);
CREATE TABLE IF NOT EXISTS results(
    task INTEGER PRIMARY KEY, value BLOB, path TEXT, size INTEGER NOT NULL);
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open ``shoal.db``: the writer in WAL mode, readers read-only (never blocking the writer)."""
    try:
        if readonly:
            if not path.exists():
                raise StoreError(
                    f"no shoal database at {path}: is this a run directory? "
                    "Runs are folders named <workflow>-<timestamp> holding shoal.db."
                )
            # Autocommit: each query is its own short read transaction, so that a reader
            # kept open (a notebook's Reader, a dashboard) never holds an old snapshot, which
            # would stop every checkpoint and let the WAL grow with the run (Writer).
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None
            )
        else:
            # One thread at a time: ``submit`` creates the writer in the caller's thread and the
            # driver thread then owns it.
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode never corrupts the database; a power cut may lose the last
            # transactions, which resume treats like a crash (those tasks run again).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=67108864")
            # 16 MiB: the pages a loop iteration touches (the newest rows, the tasks it moves);
            # more is memory a million-task run pays for with no measured gain (W5, W1)
            conn.execute("PRAGMA cache_size=-16384")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.Error as err:
        raise StoreError(f"cannot open the run database {path}: {err}") from None
    return conn
