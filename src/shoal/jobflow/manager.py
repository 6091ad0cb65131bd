"""The driver's side of a jobflow run: a Flow in, a shoal run out, the JobStore filled.

:func:`run` and :func:`submit` turn the flow into tasks (``graph.tasks_of``), run them as any
shoal workflow (every run option works), and copy every job's document and blobs from the run
directory into the user's JobStore (:func:`replay`) when the run ends. The run directory keeps
them all: :func:`resume` goes on after a crash and replays again (the same documents, keyed by
``uuid`` and ``index``, and blobs by ``blob_uuid``, so nothing is written twice), and
:func:`outputs` reads them back without the original store.

:func:`run_locally` has the signature and return value of jobflow's ``run_locally``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.errors import DefinitionError
from shoal.jobflow.execute import EXCEPTION, factory
from shoal.jobflow.graph import (
    TAG,
    Setup,
    external,
    is_jobflow,
    label,
    modules_of,
    order,
    tasks_of,
)
from shoal.jobflow.jobstore import Live, finished, output, outputs, replay, stored
from shoal.runtime import api
from shoal.runtime.options import RunOptions
from shoal.runtime.run import Run
from shoal.spec.workflow import Workflow
from shoal.store.queries import Reader

BASE = ("jobflow", "shoal.jobflow.execute")  # what every jobflow job needs: preloaded first
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
log = logging.getLogger("shoal.jobflow")


class FlowRun(Run):
    """A shoal run of a jobflow flow: :meth:`result` takes a jobflow Job (or its uuid) and
    returns its newest output as jobflow resolves a reference to it."""

    store: Any = None
    live: Live | None = None  # copies outputs into the store while the run goes
    replayed = False

    def wait(self, timeout: float | None = None) -> FlowRun:
        super().wait(timeout)
        if self.done:
            self.replay()
        return self

    def replay(self) -> int:
        """Copy the outputs of the run not copied yet into its JobStore (once it ended)."""
        if self.replayed or self.store is None:
            return 0
        n = self.live.finish() if self.live is not None else replay(self.dir, self.store)
        self.replayed = True
        return n

    def result(self, task: Any) -> Any:
        uuid = getattr(task, "uuid", None) if is_jobflow(task) else None
        if uuid is None and isinstance(task, str) and UUID.match(task):
            uuid = task
        if uuid is None:
            return super().result(task)
        return output(self.dir, uuid, lambda tid: super(FlowRun, self).result(tid))

    def outputs(self) -> Any:
        """A JobStore (in memory) with every output of the run, read from its directory."""
        return outputs(self.dir)


def _adopt(r: Run, store: Any) -> FlowRun:
    """``r`` itself as a FlowRun: the same object, which a submitted run's thread updates."""
    r.__class__ = FlowRun
    assert isinstance(r, FlowRun)
    r.store = store
    return r


# -- from a flow to a workflow --------------------------------------------------------------------
def _store(store: Any) -> Any:
    if store is None:
        from jobflow import SETTINGS

        store = SETTINGS.JOB_STORE
    store.connect()
    return store


def _names(store: Any) -> tuple[str, ...] | None:
    """The names of the store's additional stores; None when any name makes one (jobflow's
    default store)."""
    from collections import defaultdict

    extra = store.additional_stores
    return None if isinstance(extra, defaultdict) else tuple(extra)


def workflow(
    flow: Any, store: Any, setup: Setup, allow_external: bool
) -> tuple[Workflow, tuple[str, ...]]:
    """The shoal workflow of ``flow`` (a Job, a Flow or a list of them), checked whole before
    anything is stored (a cycle, a reference outside the flow, a bad ``manager_config``),
    and the modules its jobs need (``graph.modules_of``)."""
    from jobflow.core.flow import get_flow

    flow = get_flow(flow, allow_external_references=True)  # outside references: below
    jobs = order(flow)
    outside: dict[str, Any] = {}
    ext = external(jobs)
    if ext and not allow_external:
        shown = "; ".join(f"job {label(j)} refers to job {u}" for j, u in ext[:5])
        raise DefinitionError(
            f"flow {flow.name!r} ({flow.uuid}): {shown}, which is not in the flow. Add those "
            "jobs to the flow, or pass allow_external_references=True to read their outputs "
            "from the JobStore"
        )
    for _, uuid in ext:
        found = stored(store, uuid)
        if found is not None:  # not there: the job's on_missing_references decides
            outside[uuid] = found
    missing = {u for _, u in ext} - set(outside)
    wf = Workflow(flow.name or "Flow")
    tasks = tasks_of(flow, setup, {**outside, **dict.fromkeys(missing)}, factory(), jobs)
    wf.add(*tasks.values())
    return wf, modules_of(jobs)


def _setup(store: Any, folders: bool, root: str | None = None, keep: bool = False) -> Setup:
    return Setup(_names(store), folders, root, keep)


# -- running ----------------------------------------------------------------------------------
def _launch(
    flow: Any,
    store: Any,
    setup: Setup,
    allow_external: bool,
    options: dict[str, Any],
    submit: bool = False,
    then: Callable[[Workflow], Any] | None = None,
) -> FlowRun:
    """Check the options, start the backend (the local fork server imports jobflow while the
    flow is turned into tasks), make the workflow (``then`` adds to it), and run or submit it;
    a flow that is refused leaves nothing behind."""
    opts = RunOptions.of(options)
    be = api.backend_of(opts)
    be.preload(BASE)
    be.boot(True)
    try:
        wf, modules = workflow(flow, store, setup, allow_external)
        if then is not None:
            then(wf)
        opts = dataclasses.replace(
            opts, preload=tuple(dict.fromkeys((*BASE, *modules, *opts.preload)))
        )
        be.preload(tuple(opts.preload))
    except BaseException:
        be.close()
        raise
    live: list[Live] = []

    def begun(rundir: Path) -> None:  # the store fills while the run goes
        live.append(Live(rundir, store).start())

    r = _adopt(api.start(wf, opts, be, begun, background=submit), store)
    r.live = live[0] if live else None
    return r


def run(
    flow: Any,
    store: Any = None,
    *,
    allow_external_references: bool = False,
    folders: bool = True,
    **options: Any,
) -> FlowRun:
    """Run a jobflow Job or Flow on shoal (every ``shoal.run`` option works) and fill
    ``store`` (a jobflow JobStore; default: jobflow's ``SETTINGS.JOB_STORE``) with every
    job's output, as jobflow's ``run_locally`` would. ``folders``: each job runs in its task
    folder (``tasks/<id>`` in the run directory)."""
    store = _store(store)
    r = _launch(flow, store, _setup(store, folders), allow_external_references, options)
    r.replay()
    return r


def submit(
    flow: Any,
    store: Any = None,
    *,
    allow_external_references: bool = False,
    folders: bool = True,
    **options: Any,
) -> FlowRun:
    """Like :func:`run`, but return at once; ``run.wait()`` fills the store when it ends."""
    store = _store(store)
    options.setdefault("progress", False)
    setup = _setup(store, folders)
    return _launch(flow, store, setup, allow_external_references, options, submit=True)


def resume(run_dir: str | os.PathLike[str], store: Any = None, **options: Any) -> FlowRun:
    """Go on with a jobflow run after its driver died, then fill ``store`` with every output
    (those of the first part too: the same documents, written again, change nothing)."""
    store = _store(store)
    r = _adopt(api.resume(run_dir, **options), store)
    r.replay()
    return r


# -- jobflow's run_locally --------------------------------------------------------------------
def _stop_at_failure(event: Any, ctl: Any) -> None:
    """A rule: the first job that fails stops the run (``raise_immediately``)."""
    ctl.stop()


def run_locally(
    flow: Any,
    log: bool | str = True,
    store: Any = None,
    create_folders: bool = False,
    root_dir: str | os.PathLike[str] | None = None,
    ensure_success: bool = False,
    allow_external_references: bool = False,
    raise_immediately: bool = False,
    **options: Any,
) -> dict[str, dict[int, Any]]:
    """jobflow's ``run_locally``, on shoal: the jobs run in parallel on this machine's cores
    (more ``shoal.run`` options may follow, e.g. ``cpus=``, ``backend=``), and the run
    directory keeps every output. Returns ``{uuid: {index: Response}}`` for the jobs that ran.
    """
    if log:
        from jobflow.utils.log import initialize_logger

        initialize_logger(fmt=log if isinstance(log, str) else "")
    root = Path(root_dir).resolve() if root_dir is not None else Path.cwd()
    root.mkdir(exist_ok=True)
    store = _store(store)
    setup = _setup(store, create_folders, str(root), keep=raise_immediately)
    options.setdefault("progress", False)

    def then(wf: Workflow) -> None:
        if raise_immediately:
            wf.on("task-failed", tags=(TAG,))(_stop_at_failure)
        logging.getLogger("jobflow").info("Started executing jobs locally")

    r = _launch(flow, store, setup, allow_external_references, options, then=then)
    r.replay()
    bundles = [b for _, b in finished(r.dir)]
    logging.getLogger("jobflow").info("Finished executing jobs locally")
    if raise_immediately:
        _raise_first_failure(r)
    responses: dict[str, dict[int, Any]] = {}
    for b in bundles:
        responses.setdefault(b["uuid"], {})[b["index"]] = pickle.loads(b["response"])
    if ensure_success and not _succeeded(r):
        raise RuntimeError("Flow did not finish running successfully")
    return responses


def _succeeded(r: Run) -> bool:
    """Whether every job ran and succeeded (jobflow: skipped or stopped jobs count against)."""
    with Reader(r.dir) as q:
        rows = q.tasks(tag=TAG)
        stopped = q.meta().get("state") == "stopped"
    return not stopped and all(row.state == "succeeded" for row in rows)


def _raise_first_failure(r: Run) -> None:
    """Raise the exception of the first job that failed, as jobflow does: the object itself
    when it could be kept, else shoal's TaskFailed naming the job."""
    with Reader(r.dir) as q:
        failed = [row for row in q.tasks(state="failed", tag=TAG)]
    if not failed:
        return
    kept = r.dir / "tasks" / str(failed[0].id) / EXCEPTION
    if kept.exists():
        try:
            err = pickle.loads(kept.read_bytes())
        except Exception:
            err = None
        if isinstance(err, BaseException):
            raise err
    Run.result(r, failed[0].id)  # raises TaskFailed, with the job's traceback
