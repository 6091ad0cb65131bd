"""``shoal.run`` and ``shoal.submit``: validate, create the run directory, drive the loop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend
from shoal.backends.local import LocalBackend
from shoal.core.machine import Policy
from shoal.core.states import State
from shoal.errors import DefinitionError, ResourceError, StoreError
from shoal.runtime.driver import Driver
from shoal.runtime.progress import Progress, summary
from shoal.runtime.run import Run
from shoal.spec.workflow import Functions, Plan, Workflow, compile_workflow
from shoal.store.writer import Writer


@dataclass
class Settings:
    """Process-wide settings; ``shoal run FILE.py`` turns on progress and summaries."""

    cli: bool = False
    runs: list[Run] = field(default_factory=list)


settings = Settings()


def make_backend(
    backend: Backend | str | None,
    cpus: int | None,
    gpus: int | None,
    memory: int | str | None,
    pin: bool | str | None,
    launcher: str,
) -> Backend:
    if isinstance(backend, Backend):
        if cpus is not None or gpus is not None:
            raise DefinitionError("cpus=/gpus= pretend a local node; give them to the backend")
        return backend
    if backend in (None, "local"):
        from shoal.spec.options import parse_memory

        mem = parse_memory(memory) if memory is not None else None
        return LocalBackend(cpus=cpus, gpus=gpus, memory=mem, pin=pin, launcher=launcher)
    raise DefinitionError(
        f"unknown backend {backend!r}: this version of shoal offers 'local' (the default)"
    )


def new_rundir(base: Path, name: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise DefinitionError(f"cannot create a run directory for {name!r} in {base}")


def check_resources(plan: Plan, backend: Backend) -> None:
    from shoal.core.resources import Pool

    pool = Pool(tuple(backend.nodes()))
    seen = set()
    for r in plan.records:
        req = r.options.request
        if req in seen:
            continue
        seen.add(req)
        why = pool.refusal(req)
        if why:
            raise ResourceError(
                f"task {r.name!r} (#{r.id}) can never start: {why}. Lower its request, or, "
                "to test on a small machine, pretend a bigger node: "
                "wf.run(cpus=..., gpus=..., memory=...)."
            )


def _logger(rundir: Path) -> logging.Logger:
    log = logging.getLogger(f"shoal.run.{rundir.name}.{id(rundir)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(rundir / "shoal.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


class Prepared:
    """A checked workflow with its run directory created, ready to drive."""

    def __init__(
        self, wf: Workflow, backend: Backend, base: Path, policy: Policy, progress: bool
    ) -> None:
        self.functions = Functions()
        plan = compile_workflow(wf, functions=self.functions)
        self.ids = {t.key: t.id for t in wf.tasks if t.id is not None}
        self.rules = wf.rules
        self.strategies = wf.strategies
        self.tracked = wf.tracked
        check_resources(plan, backend)
        self.plan = plan
        self.backend = backend
        self.dir = new_rundir(base, wf.name)
        self.log = _logger(self.dir)
        self.writer = Writer(self.dir)
        # Workers import while the plan is written to the store.
        backend.start(self.dir)
        backend.warm(*Driver.workers_wanted(plan, backend))
        nodes = backend.nodes()
        self.writer.init(
            {
                "name": wf.name,
                "state": "running",
                "created": time.time(),
                "backend": backend.name,
                "policy": policy.mode,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "tasks": len(plan.records),
                "argv": sys.argv,
            },
            nodes,
        )
        self.writer.add_plan(plan)
        self.policy = policy
        self.progress = progress
        self.log.info(
            "run %s: %d tasks on %s",
            wf.name,
            len(plan.records),
            "; ".join(n.describe() for n in nodes),
        )
        for note in backend.notes():  # said once per run: in the log and on stderr
            self.log.info("note: %s", note)
            print(f"shoal: {note}", file=sys.stderr)

    def execute(self, run: Run) -> Run:
        bar = Progress(self.plan.name, len(self.plan.records)) if self.progress else None
        driver = Driver(
            self.plan,
            self.backend,
            self.dir,
            self.writer,
            self.policy,
            self.log,
            bar.update if bar else None,
            rules=self.rules,
            strategies=self.strategies,
            tracked=self.tracked,
            ids=self.ids,
            functions=self.functions,
        )
        state = "crashed"
        try:
            with bar if bar else _null():
                state = driver.run()
        except KeyboardInterrupt:
            state = "interrupted"
            raise
        finally:
            run.state = state
            self.backend.close()
            try:
                self.writer.set_meta(state=state, ended=time.time())
            except StoreError as err:  # e.g. the disk is full: keep the error that ended the run
                self.log.error("could not record the end of the run: %s", err)
            finally:
                self.writer.close()
            counts = driver.scheduler.counts
            self.log.info(
                "run ended %s: %s",
                state,
                ", ".join(f"{counts[s]} {s.value}" for s in State if counts[s]),
            )
            for h in list(self.log.handlers):
                h.close()
                self.log.removeHandler(h)
        if self.progress:
            summary(run)
        return run


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def prepare(
    wf: Workflow,
    *,
    cpus: int | None = None,
    gpus: int | None = None,
    memory: int | str | None = None,
    backend: Backend | str | None = None,
    base: str | os.PathLike[str] | None = None,
    policy: str = "backfill",  # or "waves"; MatEnsemble's names "adaptive"/"non-adaptive" too
    reserve_after: float = 60.0,
    pin: bool | str | None = None,
    launcher: str = "mpiexec -n {ranks}",
    progress: bool | None = None,
    prefetch: int | None = None,
    prefetch_window: float = 0.02,
    order: str = "fifo",
) -> Prepared:
    if not isinstance(wf, Workflow):
        raise DefinitionError(f"shoal.run needs a Workflow, got {type(wf).__name__}")
    be = make_backend(backend, cpus, gpus, memory, pin, launcher)
    show = settings.cli if progress is None else progress
    depth = be.prefetch if prefetch is None else prefetch
    pol = Policy(
        mode=policy,
        reserve_after=reserve_after,
        order=order,
        prefetch=depth,
        prefetch_window=prefetch_window,
    )
    return Prepared(wf, be, Path(base or os.getcwd()), pol, show)


def _check_options(options: dict[str, Any]) -> None:
    import difflib
    import inspect

    known = [n for n in inspect.signature(prepare).parameters if n != "wf"]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DefinitionError(
                f"unknown run option {name!r}{hint} Run options are: {', '.join(known)}"
            )


def run(wf: Workflow, **options: Any) -> Run:
    """Run ``wf`` to the end on this machine (by default) and return its :class:`Run`.

    Options: ``cpus``/``gpus``/``memory`` pretend a node of that size; ``backend``; ``base``
    (where run directories go, default: the current directory); ``policy`` ('backfill' or
    'waves'); ``order`` ('fifo', or 'largest' first among equal priority);
    ``reserve_after`` (seconds before a waiting large task gets a reservation);
    ``pin`` (True, 'fold' or False); ``launcher`` (MPI launcher template with ``{ranks}``);
    ``progress`` (show a progress bar; default: only under ``shoal run``); ``prefetch``
    (at most this many tasks queued behind each running short task; default: the backend's,
    64 for local; 0 turns it off) and ``prefetch_window`` (seconds of expected work queued per
    slot, from the average run time of tasks of that shape).
    """
    _check_options(options)
    p = prepare(wf, **options)
    r = Run(p.dir, wf.name, ids=p.ids)
    settings.runs.append(r)
    return p.execute(r)


def submit(wf: Workflow, **options: Any) -> Run:
    """Like :func:`run`, but return at once; the run goes on in a background thread."""
    _check_options(options)
    options.setdefault("progress", False)
    p = prepare(wf, **options)
    box: list[Run] = []

    def body() -> None:
        try:
            p.execute(box[0])
        except BaseException as err:  # handed to run.wait()
            box[0].error = err

    thread = threading.Thread(target=body, name=f"shoal-{wf.name}", daemon=True)
    r = Run(p.dir, wf.name, thread, ids=p.ids)
    box.append(r)
    settings.runs.append(r)
    thread.start()
    return r
