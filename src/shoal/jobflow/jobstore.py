"""The user's JobStore, filled from the run directory: while the run goes (:class:`Live`), when
it ends, and again on resume (:func:`replay`); and the outputs read back without that store
(:func:`outputs`, :func:`output`).

The run directory is the truth: every job's bundle (its document, its blobs) is a task result
there, committed before anything depends on it. Copying into the JobStore is idempotent:
documents are keyed by (uuid, index), blobs by blob_uuid, and a document already there as it
is, is not written again (a resume replays the whole run).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shoal.errors import StoreError
from shoal.jobflow.graph import TAG, Bundle
from shoal.store.queries import Reader

log = logging.getLogger("shoal.jobflow")
EVERY = 1.0  # seconds between two copies into the JobStore while the run goes


def finished(rundir: Path, skip: Iterable[int] = ()) -> list[tuple[int, Bundle]]:
    """(task id, bundle) of every job that succeeded, in the order the tasks were added,
    less the tasks in ``skip``."""
    left = set(skip)
    with Reader(rundir) as r:
        rows = [row.id for row in r.tasks(state="succeeded", tag=TAG) if row.id not in left]
        return [(tid, r.result(tid)) for tid in rows]


def stored(store: Any, uuid: str) -> Bundle | None:
    """The newest output of job ``uuid`` in ``store`` as a bundle (None: it has none)."""
    docs = list(store.docs_store.query({"uuid": uuid}, sort={"index": -1}, limit=1))
    if not docs:
        return None
    doc = {k: v for k, v in docs[0].items() if k != "_id"}
    blobs = [
        (name, {k: v for k, v in b.items() if k != "_id"})
        for name, s in store.additional_stores.items()
        for b in s.query({"job_uuid": uuid, "job_index": doc["index"]})
    ]
    return {
        "uuid": uuid,
        "index": doc["index"],
        "name": doc.get("name"),
        "task": None,
        "doc": doc,
        "blobs": blobs,
        "carried": [],
        "response": None,
    }


def replay(rundir: str | os.PathLike[str], store: Any) -> int:
    """Write the document and blobs of every job of the run into ``store``; the number of
    documents. Idempotent (see the module's doc)."""
    store.connect()
    return write(store, [b for _, b in finished(Path(rundir))])


def write(store: Any, bundles: list[Bundle]) -> int:
    """Write the documents and blobs of ``bundles`` into the JobStore ``store``."""
    docs: list[dict[str, Any]] = []
    blobs: dict[str, list[dict[str, Any]]] = {}
    for b in bundles:
        docs.append(dict(b["doc"]))
        for name, blob in b["blobs"]:
            blobs.setdefault(name, []).append(dict(blob))
    _upsert(store.docs_store, docs, ("uuid", "index"))
    for name, items in blobs.items():
        _upsert(store.additional_stores[name], items, ("blob_uuid",))
    return len(docs)


def _upsert(target: Any, docs: list[dict[str, Any]], key: tuple[str, ...]) -> None:
    """Write ``docs`` into a maggma store, replacing those with the same ``key``. An
    in-memory store (mongomock) scans every document for each upsert, which makes a bulk
    replay quadratic: there the documents not in it yet are inserted at once, and those
    already there as they are left alone."""
    if not docs:
        return
    from maggma.stores import MemoryStore

    if not isinstance(target, MemoryStore):
        target.update(docs, key=list(key))
        return
    have = {tuple(d.get(k) for k in key) for d in target.query({}, properties=list(key))}
    new = [d for d in docs if tuple(d[k] for k in key) not in have]
    old = [d for d in docs if tuple(d[k] for k in key) in have]
    if new:
        target._collection.insert_many(new)
    if old:  # a resume writes the whole run again: most are there as they are
        there = {
            tuple(d.get(k) for k in key): {k: v for k, v in d.items() if k != "_id"}
            for d in target.query({})
        }
        changed = [d for d in old if there.get(tuple(d[k] for k in key)) != _plain(d)]
        if changed:
            target.update(changed, key=list(key))


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}


class Live:
    """Copies the outputs of a running run into its JobStore every :data:`EVERY` seconds, in
    a thread of the driver's process; :meth:`finish` copies the rest once the run ended. A
    copy that fails (the database is down) is said once and tried again later: the run
    directory keeps everything, and :meth:`finish` (or a resume) writes it all."""

    def __init__(self, rundir: Path, store: Any, every: float = EVERY) -> None:
        self.rundir = rundir
        self.store = store
        self.every = every
        self.written: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one copy at a time: the thread's, or finish()
        self._thread: threading.Thread | None = None
        self._said = False

    def start(self) -> Live:
        self._thread = threading.Thread(target=self._loop, name="shoal-jobstore", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.copy()
            except Exception as err:  # said once; finish() tries again
                if not self._said:
                    self._said = True
                    log.warning("copying outputs into the JobStore failed (tried again): %s", err)

    def copy(self) -> int:
        """Copy the outputs not copied yet; how many."""
        with self._lock:
            found = finished(self.rundir, self.written)
            n = write(self.store, [b for _, b in found])
            self.written.update(tid for tid, _ in found)
            return n

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> int:
        """Stop the thread and copy the rest (this one raises what fails)."""
        self.stop()
        return self.copy()


def outputs(rundir: str | os.PathLike[str]) -> Any:
    """A JobStore of in-memory stores with every output of the run in ``rundir``: read them
    back without the original store (``get_output``, ``query``)."""
    from jobflow.core.store import JobStore
    from maggma.stores import MemoryStore

    found = [b for _, b in finished(Path(rundir))]
    names = sorted({name for b in found for name, _ in b["blobs"]})
    store = JobStore(MemoryStore(), additional_stores={n: MemoryStore() for n in names})
    store.connect()
    write(store, found)
    return store


def output(rundir: Path, uuid: str, failed: Callable[[int], Any]) -> Any:
    """Job ``uuid``'s newest output, decoded as a reference to it is; when it has none, the
    error of its newest task (``failed``: ``Run.result`` of a task id)."""
    from monty.json import MontyDecoder

    store = outputs(rundir)
    try:
        value = store.get_output(uuid, which="last", load=True)
    except ValueError:
        tid = _task_of(rundir, uuid)
        failed(tid)  # raises: failed, skipped, not run yet
        raise StoreError(f"job {uuid} has no output in {rundir}") from None
    return MontyDecoder().process_decoded(value)


def _task_of(rundir: Path, uuid: str) -> int:
    with Reader(rundir) as r:
        rows = [row for row in r.tasks(tag=TAG) if f" {uuid}/" in row.name]
    if not rows:
        raise StoreError(f"no job {uuid} in the run in {rundir}")
    return rows[-1].id
