"""``shoal.run``, ``shoal.submit`` and ``shoal.resume``: check the options, open the run's
session (runtime/session.py), drive it (runtime/driver.py).

The options are :class:`~shoal.runtime.options.RunOptions`, defined once there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend
from shoal.backends.choose import make_backend
from shoal.core.policy import Policy
from shoal.errors import DefinitionError, StoreError
from shoal.runtime.imports import restored
from shoal.runtime.options import RunOptions, doc, signature, started
from shoal.runtime.run import Run
from shoal.runtime.session import Extras, Session, new_rundir, resumed
from shoal.spec.retry import make as make_retry
from shoal.spec.workflow import Workflow
from shoal.store.queries import Reader
from shoal.store.recover import verify

__all__ = [
    "Run",
    "RunOptions",
    "backend_of",
    "new_rundir",
    "prepare",
    "resume",
    "run",
    "start",
    "submit",
]


def backend_of(opts: RunOptions) -> Backend:
    """The backend the options ask for, told what to preload (not started yet)."""
    be = make_backend(
        opts.backend, opts.cpus, opts.gpus, opts.memory, opts.pin, opts.launcher, opts.mpi
    )
    if opts.preload:
        be.preload(tuple(opts.preload))
    return be


def prepare(
    wf: Workflow | None,
    opts: RunOptions,
    resume: Path | None = None,
    backend: Backend | None = None,
    begun: Callable[[Path], Any] | None = None,
) -> Session:
    """The session of a new run of ``wf``, or (``resume``) of the run in that directory.
    ``backend``: one made (and perhaps booted) from ``opts`` already (:func:`backend_of`);
    ``begun``: called with the run directory once it exists, before the run starts."""
    if resume is None and not isinstance(wf, Workflow):
        raise DefinitionError(f"shoal.run needs a Workflow, got {type(wf).__name__}")
    stop = opts.deadline()
    default = make_retry("run options", opts.retries, opts.backoff, opts.retry_on, opts.escalate)
    state_dir = Path(opts.state_dir) if opts.state_dir else None
    extras = Extras(stop, opts.stop_mode, default, state_dir)
    be = backend_of(opts) if backend is None else backend
    window = opts.prefetch_window
    pol = Policy(
        mode=opts.policy,  # type: ignore[arg-type]  # a word; Policy checks it
        reserve_after=opts.reserve_after,
        order=opts.order,  # type: ignore[arg-type]
        prefetch=be.prefetch if opts.prefetch is None else opts.prefetch,
        prefetch_window=be.prefetch_window if window is None else window,
        follow="follow" in be.capabilities,
    )
    show = opts.shows_progress()
    if resume is not None:
        session = resumed(resume, be, pol, show, extras)
    else:
        assert wf is not None
        base = Path(opts.base or os.getcwd())
        session = Session.new(wf, be, base, pol, show, extras, opts.stored())
    if begun is not None:
        begun(session.dir)
    return session


def run(wf: Workflow, **options: Any) -> Run:
    """Run ``wf`` to the end on this machine (by default) and return its :class:`Run`.

    The options (:class:`~shoal.runtime.options.RunOptions`) are listed below."""
    return start(wf, RunOptions.of(options))


def start(
    wf: Workflow,
    opts: RunOptions,
    backend: Backend | None = None,
    begun: Callable[[Path], Any] | None = None,
    background: bool = False,
) -> Run:
    """:func:`run` (or, ``background``, :func:`submit`) with the options checked and perhaps
    the backend made already (``begun``: see :func:`prepare`)."""
    p = prepare(wf, opts, backend=backend, begun=begun)
    if not background:
        r = Run(p.dir, wf.name, ids=p.ids)
        started(r)
        return p.execute(r)
    box: list[Run] = []

    def body() -> None:
        try:
            p.execute(box[0])
        except BaseException as err:  # handed to run.wait()
            box[0].error = err

    thread = threading.Thread(target=body, name=f"shoal-{wf.name}", daemon=True)
    r = Run(p.dir, wf.name, thread, ids=p.ids)
    box.append(r)
    started(r)
    thread.start()
    return r


def resume(run_dir: str | os.PathLike[str], **options: Any) -> Run:
    """Go on with the run in ``run_dir`` after its driver died or was stopped.

    Tasks that succeeded are not run again (their results are reused); attempts that were
    running are recorded as lost and run again; work added by Responses, rules, strategies and
    requests is there, and so is the memory of rules and strategies. The run's options (node
    size, policy, retries) are those it was started with, unless given here.
    """
    rundir = Path(run_dir).absolute()  # the run goes on in its own working directory
    RunOptions.of(options)  # unknown names are refused before anything is read
    if not (rundir / "shoal.db").exists():
        raise StoreError(
            f"no shoal database in {rundir}: give a run directory (a folder named "
            "<workflow>-<timestamp> holding shoal.db)"
        )
    verify(rundir)  # a damaged store is refused before anything reads it
    meta = _stored_meta(rundir)
    stored = meta.get("options") or {}
    with restored(meta) as changed:
        known = set(RunOptions.names())  # options stored by an older shoal may be gone
        given = {k: v for k, v in {**stored, **options}.items() if k in known}
        p = prepare(None, RunOptions.of(given), resume=rundir)
        if changed:
            p.log.info("as when the run started: %s", changed)
        r = Run(p.dir, p.plan.name)
        started(r)
        return p.execute(r)


def _stored_meta(rundir: Path) -> dict[str, Any]:
    with Reader(rundir) as r:
        return r.meta()


def submit(wf: Workflow, **options: Any) -> Run:
    """Like :func:`run`, but return at once; the run goes on in a background thread."""
    options.setdefault("progress", False)
    return start(wf, RunOptions.of(options), background=True)


run.__doc__ = f"{run.__doc__}\n\n" + "\n".join("    " + line for line in doc().splitlines())
run.__signature__ = signature("wf")  # type: ignore[attr-defined]
submit.__signature__ = signature("wf")  # type: ignore[attr-defined]
resume.__signature__ = signature("run_dir")  # type: ignore[attr-defined]
