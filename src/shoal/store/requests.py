"""The ``requests`` table: what other processes ask of a run, and the driver's answers.

Another process puts a request (:func:`put`); the live driver reads those not yet taken
(:func:`pending`) and writes each answer in the same transaction as what the request changed
(``Batch.answers``, store/writer.py); whoever asked reads it back (:func:`answer`).
"""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any

from shoal.errors import StoreError
from shoal.store.schema import connect


def pending(conn: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
    """The requests not yet taken, oldest first: (id, kind, pickled payload)."""
    rows = conn.execute(
        "SELECT id, kind, payload FROM requests WHERE taken IS NULL ORDER BY id"
    ).fetchall()
    return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]


def put(path: Path, kind: str, payload: dict[str, Any]) -> int:
    """Queue a request in the store at ``path``; return its id."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "INSERT INTO requests(time, kind, payload) VALUES (?, ?, ?)",
            (time.time(), kind, pickle.dumps(payload, protocol=5)),
        )
        conn.execute("COMMIT")
        rid = cur.lastrowid
    except sqlite3.Error as err:
        raise StoreError(f"cannot queue a request in {path}: {err}") from None
    finally:
        conn.close()
    assert rid is not None
    return rid


def answer(path: Path, request: int) -> str | None:
    """The driver's answer to a request (None: not taken yet)."""
    conn = connect(path, readonly=True)
    try:
        row = conn.execute("SELECT answer FROM requests WHERE id=?", (request,)).fetchone()
    finally:
        conn.close()
    return str(row[0]) if row and row[0] is not None else None
