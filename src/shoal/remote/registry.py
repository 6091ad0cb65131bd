"""The runs sent to remote hosts, in a small SQLite file in shoal's config folder
(``remote.db``): which host, which folder there, which batch job, and what was last seen of
it. A row is written before the batch job is submitted (state ``submitting``) and completed
after, so that a submission cut off half-way is visible and can be checked, never lost.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import DefinitionError, StoreError
from shoal.remote import hosts
from shoal.remote.hosts import Host, config_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,   -- the folder's name there, and how the user names the run
    host TEXT NOT NULL,
    folder TEXT NOT NULL,        -- absolute, on the host
    target TEXT NOT NULL,        -- the script or config file run there
    batch TEXT NOT NULL,
    job TEXT,                    -- the batch job id (None while submitting)
    state TEXT NOT NULL,         -- submitting, pending, running, ended, failed, cancelled, unknown
    submitted REAL NOT NULL,
    updated REAL NOT NULL,
    note TEXT,
    record TEXT);                -- the host's record at submission (JSON), for a host that
                                 -- lives in a project's file elsewhere
"""


@dataclass(frozen=True)
class RemoteRun:
    id: int
    name: str
    host: str
    folder: str
    target: str
    batch: str
    job: str | None
    state: str
    submitted: float
    updated: float
    note: str | None
    record: str | None = None


def _path() -> Path:
    return config_dir() / "remote.db"


@contextmanager
def _db() -> Iterator[sqlite3.Connection]:
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        if "record" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}:
            conn.execute("ALTER TABLE runs ADD COLUMN record TEXT")  # a registry of before
    except sqlite3.Error as err:
        raise StoreError(f"cannot open the registry of remote runs {path}: {err}") from None
    path.chmod(0o600)
    try:
        yield conn
    finally:
        conn.close()


def add(name: str, host: Host, folder: str, target: str) -> RemoteRun:
    now = time.time()
    record = json.dumps(host.as_dict(defaults=False))
    with _db() as c:
        try:
            cur = c.execute(
                "INSERT INTO runs(name, host, folder, target, batch, state, submitted, updated,"
                " record) VALUES (?, ?, ?, ?, ?, 'submitting', ?, ?, ?)",
                (name, host.name, folder, target, host.batch.value, now, now, record),
            )
        except sqlite3.IntegrityError:
            raise DefinitionError(f"a remote run {name!r} exists already") from None
    return get(str(cur.lastrowid))


def update(run: RemoteRun, **fields: str | None) -> RemoteRun:
    allowed = {"job", "state", "note"}
    if set(fields) - allowed:
        raise ValueError(f"cannot set {set(fields) - allowed}")
    sets = ", ".join(f"{k}=?" for k in fields)
    with _db() as c:
        c.execute(
            f"UPDATE runs SET {sets}, updated=? WHERE id=?",
            (*fields.values(), time.time(), run.id),
        )
    return get(str(run.id))


def get(ref: str) -> RemoteRun:
    """A remote run by its name or id."""
    with _db() as c:
        row = c.execute(
            "SELECT * FROM runs WHERE name=? OR CAST(id AS TEXT)=?", (ref, ref)
        ).fetchone()
    if row is None:
        raise DefinitionError(f"no remote run {ref!r}: shoal remote list shows them")
    return RemoteRun(*row)


def all_runs() -> list[RemoteRun]:
    with _db() as c:
        return [RemoteRun(*r) for r in c.execute("SELECT * FROM runs ORDER BY id DESC")]


def host_of(run: RemoteRun) -> Host:
    """The host of a run: as recorded now (the user's or this project's file), else as it
    was when the run was submitted (a project's host, from another folder)."""
    known = hosts.load()
    if run.host in known:
        return known[run.host]
    if run.record:
        return hosts.make(**json.loads(run.record))
    return hosts.find(run.host)  # says it is unknown, and how to add it
