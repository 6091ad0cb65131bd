"""What runs in a worker for one jobflow job: jobflow's own ``Job.run``, against a scratch
JobStore that holds the outputs of the jobs it refers to.

jobflow does everything a job's run means (resolving references at any depth, the newest
index, ``on_missing_references``, output schemas, serialisation, additional stores, the
Response and what it hands down to the jobs it makes); shoal does the managing. The scratch
store is a ``JobStore`` of in-memory stores, filled from the bundles of the job's inputs; what
``Job.run`` writes there (one document, its blobs) is this job's :data:`Bundle`, the task's
output. The driver copies it into the user's JobStore (``jobstore.py``), so that store ends
as jobflow's ``run_locally`` would leave it, and the run directory keeps every output.

A Response's new jobs become the tasks of a shoal Response: ``replace`` (its stand-in, the job
that takes the replaced uuid at the next index, last), ``detour``, ``addition``. A Flow
without an output replaces without a stand-in: its jobs are added, and the dependents read the
replaced job's own output, as jobflow-remote does. ``stop_children`` and ``stop_jobflow`` stop
the jobs the same Response made too (jobflow-remote records them stopped; here they are never
added).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoal.jobflow.graph import Bundle, Setup, stand_in_last, tasks_of, unknown_store

EXCEPTION = "exception.pickle"  # a failed job's exception, in its task folder (Setup.keep)
_CWD = threading.Lock()  # the working directory is the process's: one job in it at a time


def factory() -> Any:
    """The shoal task factory of :func:`run_job`."""
    from shoal.spec.task import task

    return task(run_job)


def run_job(job: Any, setup: Setup, *inputs: Bundle) -> Any:
    """Run ``job`` (a jobflow Job) with the bundles of the jobs it refers to."""
    from shoal.backends.execute import current

    here = current()
    inputs = tuple(b for b in inputs if b is not None)  # None: a job that failed (tolerated)
    store = scratch(job, (*inputs, *exposed(job, here.dir)), setup.stores)
    folder = job_folder(setup, here.dir)
    try:
        with inside(folder):
            response = job.run(store, job_dir=folder)
    except BaseException as err:
        if setup.keep:
            keep(err, here.dir)
        better = unknown_store(job, setup, err)
        if better is not None:
            raise better from None
        raise
    own = bundle(store, job, here.task, inputs, response, folder)
    return respond(job, response, setup, inputs, here.task, own)


def exposed(job: Any, taskdir: str) -> list[Bundle]:
    """For a job that asks for the store (``expose_store``: ``CURRENT_JOB.store``), the
    outputs of every job of the run that has finished, read from the run directory, as a
    manager's store would hold them (jobflow's ``run_locally`` and jobflow-remote expose the
    whole store). Nothing when the run directory cannot be read from here."""
    if not getattr(job.config, "expose_store", False):
        return []
    from shoal.jobflow.jobstore import finished

    rundir = Path(taskdir).parent.parent  # <run>/tasks/<id>
    try:
        return [b for _, b in finished(rundir)]
    except Exception:  # a worker without the run directory: its inputs only
        return []


def every(inputs: tuple[Bundle, ...] | list[Bundle]) -> list[Bundle]:
    """The bundles and those they carry, each (uuid, index) once."""
    out: list[Bundle] = []
    seen: set[tuple[str, int]] = set()
    todo = list(inputs)
    while todo:
        b = todo.pop()
        key = (b["uuid"], b["index"])
        if key in seen:
            continue
        seen.add(key)
        out.append(b)
        todo.extend(b.get("carried", ()))
    return out


def scratch(job: Any, inputs: tuple[Bundle, ...], stores: tuple[str, ...] | None = None) -> Any:
    """A JobStore of in-memory stores holding the documents and blobs of ``inputs``
    (``scratch.ScratchStore``: what jobflow asks of it is answered without mongomock), with
    the additional stores the user's JobStore has (``stores``; None: any name), so that
    jobflow refuses a value for any other, as it would there."""
    from jobflow.core.store import JobStore

    from shoal.jobflow.scratch import ScratchStore

    found = every(inputs)
    names = set(getattr(job, "_kwargs", {}) or {})
    for b in found:
        names.update(name for name, _ in b["blobs"])
    if stores is not None:
        names &= set(stores)
    extra: dict[str, Any] = {n: ScratchStore() for n in sorted(names)}
    store: Any = JobStore(ScratchStore(), additional_stores=extra)
    store.connect()
    if found:
        store.docs_store.update([dict(b["doc"]) for b in found], key=["uuid", "index"])
    blobs: dict[str, list[dict[str, Any]]] = {}
    for b in found:
        for name, blob in b["blobs"]:
            blobs.setdefault(name, []).append(dict(blob))
    for name, docs in blobs.items():
        store.additional_stores[name].update(docs, key="blob_uuid")
    return store


def job_folder(setup: Setup, taskdir: str) -> str | None:
    """The folder the job runs in: its own (the task's, or a new one in ``setup.root`` named
    as jobflow names them), or ``setup.root``, or (None) wherever the worker is."""
    if not setup.folders:
        return setup.root
    if setup.root is None:
        os.makedirs(taskdir, exist_ok=True)
        return taskdir
    while True:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H-%M-%S-%f")
        path = os.path.join(setup.root, f"job_{stamp}-{random.randint(10000, 99999)}")
        with contextlib.suppress(FileExistsError):
            os.makedirs(path)
            return path


@contextlib.contextmanager
def inside(folder: str | None) -> Iterator[None]:
    """Run in ``folder``: a worker's working directory is its process's, so jobs that run in
    threads of one process (Dask workers) take turns."""
    if folder is None:
        yield
        return
    with _CWD:
        old = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(old)


def keep(err: BaseException, taskdir: str) -> None:
    """Keep the exception object itself, for ``run_locally(raise_immediately=True)``."""
    try:
        data = pickle.dumps(err, protocol=5)
    except Exception:
        return
    os.makedirs(taskdir, exist_ok=True)
    with open(os.path.join(taskdir, EXCEPTION), "wb") as f:
        f.write(data)


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    """A document without the in-memory store's ``_id``."""
    return {k: v for k, v in doc.items() if k != "_id"}


def bundle(
    store: Any,
    job: Any,
    task: int,
    inputs: tuple[Bundle, ...],
    response: Any,
    folder: str | None,
) -> Bundle:
    """This job's output as its dependents and the driver take it (see the module's doc).

    An output that holds references (a replacement's stand-in, whose output is the replacing
    flow's, or a job run with ``on_missing_references="pass"``) carries the bundles of its
    inputs, so that a reader resolves them as jobflow's ``get_output`` does."""
    from jobflow.utils.find import find_key_value

    key = {"uuid": job.uuid, "index": job.index}
    docs = [_plain(d) for d in store.docs_store.query(key)]
    if len(docs) != 1:
        raise RuntimeError(
            f"job {job.name} ({job.uuid}) wrote {len(docs)} documents for its index "
            f"{job.index}; jobflow writes exactly one"
        )
    blobs = [
        (name, _plain(d))
        for name, s in store.additional_stores.items()
        for d in s.query({"job_uuid": job.uuid, "job_index": job.index})
    ]
    out = docs[0].get("output")
    refs = isinstance(out, dict | list) and find_key_value(out, "@class", "OutputReference")
    response.job_dir = Path(folder) if folder is not None else None  # as run_locally
    return {
        "uuid": job.uuid,
        "index": job.index,
        "name": job.name,
        "task": task,
        "doc": docs[0],
        "blobs": blobs,
        "carried": list(inputs) if refs else [],
        "response": _pickled(response),
    }


def _pickled(response: Any) -> bytes:
    """jobflow's Response (``run_locally`` returns them), without its output if that does
    not pickle (the output itself is in the document)."""
    from shoal.spec.lower import cdumps

    try:
        return cdumps(response)
    except Exception:
        response.output = None
        return cdumps(response)


def respond(
    job: Any, response: Any, setup: Setup, inputs: tuple[Bundle, ...], task: int, own: Bundle
) -> Any:
    """The task's return value: the bundle, in a shoal Response when the job's Response
    changes the run."""
    from shoal.spec.refs import StoredRef
    from shoal.spec.response import Response

    stop_children, stop_run = bool(response.stop_children), bool(response.stop_jobflow)
    if stop_children or stop_run:  # the jobs this Response made stop with the rest
        return Response(own, stop_children=stop_children, stop_run=stop_run)
    if response.replace is None and response.detour is None and response.addition is None:
        return own
    outside: dict[str, Any] = {
        b["uuid"]: StoredRef(b["task"]) if b["task"] is not None else b for b in every(inputs)
    }
    outside[job.uuid] = StoredRef(task)
    base = factory()
    add: list[Any] = []
    replace: list[Any] = []
    detour: list[Any] = []
    if response.replace is not None:
        tasks, stands = stand_in_last(tasks_of(response.replace, setup, outside, base), job.uuid)
        (replace if stands else add).extend(tasks)
    if response.detour is not None:
        detour = list(tasks_of(_flow(response.detour), setup, outside, base).values())
    if response.addition is not None:
        add.extend(tasks_of(_flow(response.addition), setup, outside, base).values())
    return Response(own, add=add or None, detour=detour or None, replace=replace or None)


def _flow(value: Any) -> Any:
    """A Response's detour or addition as a Flow (``Job.run`` made them Flows already)."""
    from jobflow.core.flow import Flow

    return value if isinstance(value, Flow) else Flow(value)
