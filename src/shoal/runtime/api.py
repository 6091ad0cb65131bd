"""``shoal.run`` and ``shoal.submit``: validate, create the run directory, drive the loop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend
from shoal.backends.local import LocalBackend
from shoal.core.machine import Policy
from shoal.core.resources import Pool
from shoal.core.states import State
from shoal.errors import DefinitionError, StoreError, hint
from shoal.runtime.driver import Driver, check_resources
from shoal.runtime.imports import check, recorded, restored
from shoal.runtime.progress import Progress, summary
from shoal.runtime.run import Run
from shoal.spec.lower import Functions, Plan
from shoal.spec.retry import Backoff
from shoal.spec.retry import make as make_retry
from shoal.spec.steer import Rule, Strategy
from shoal.spec.workflow import Workflow, compile_workflow
from shoal.store.fs import warn_filesystem
from shoal.store.lock import Lock
from shoal.store.recover import Snapshot, load, load_rule, verify
from shoal.store.writer import Writer, live_path, sync


@dataclass
class Settings:
    """Process-wide settings; ``shoal run FILE.py`` turns on progress and summaries."""

    cli: bool = False
    runs: list[Run] = field(default_factory=list)
    stop_at: float | None = None  # a deadline for every run (shoal run/resume --time-left)


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
    if backend is None and cpus is None and gpus is None and memory is None:
        backend = _default_backend()
    if backend == "slurm":
        from shoal.backends.slurm import SlurmBackend

        return SlurmBackend()
    if backend == "dask":
        from shoal.backends.dask import DaskBackend

        return DaskBackend()
    if backend == "flux":
        from shoal.backends.flux import FluxBackend

        return FluxBackend()
    if backend in (None, "local"):
        from shoal.spec.options import parse_memory

        mem = parse_memory(memory) if memory is not None else None
        return LocalBackend(cpus=cpus, gpus=gpus, memory=mem, pin=pin, launcher=launcher)
    raise DefinitionError(
        f"unknown backend {backend!r}: shoal offers 'local' (the default outside Slurm), "
        "'slurm' (the default inside an allocation), 'dask' (with SHOAL_DASK_ADDRESS or a "
        "DaskBackend(...) object) and 'flux' (experimental: only when asked for by name)"
    )


def _default_backend() -> str:
    """'slurm' inside a Slurm allocation (SLURM_JOB_ID), else 'local'; SHOAL_BACKEND decides
    when set. Flux is experimental (its backend has never run against a real broker here), so
    it is never chosen silently, even inside a Flux instance: ask for it by name."""
    chosen = os.environ.get("SHOAL_BACKEND")
    if chosen:
        return chosen
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm"
    return "local"


NAME_MAX = 255 - len("-YYYYmmdd-HHMMSS-999")  # bytes of a workflow name in a folder name


def new_rundir(base: Path, name: str) -> Path:
    size = len(os.fsencode(name))
    if size > NAME_MAX or "/" in name or "\0" in name:
        why = f"is {size} bytes long" if size > NAME_MAX else "holds a '/' or a NUL"
        raise DefinitionError(
            f"the workflow name {name[:60]!r}{'...' if len(name) > 60 else ''} {why}: the run "
            f"directory is named after it (<name>-<timestamp>), and a file name has at most 255 "
            f"bytes. Give the workflow a name of at most {NAME_MAX} bytes, without '/'."
        )
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise unwritable(base, err, "create the folder for run directories") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise unwritable(base, err, "create a run directory") from None
    raise DefinitionError(f"cannot create a run directory for {name!r} in {base}")


def unwritable(where: Path, err: OSError, what: str) -> StoreError:
    """A StoreError for a folder shoal cannot write, with what to do."""
    import errno

    why = err.strerror or str(err)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (
            "Run from a folder you can write, or give another one: wf.run(base=...) "
            "(for a resume: make the run directory writable, or copy it somewhere writable)"
        )
    elif err.errno == errno.ENOSPC:
        fix = "Free space on that disk, or give another folder: wf.run(base=...)"
    elif err.errno in (errno.EMFILE, errno.ENFILE):
        fix = "Raise the limit on open files (ulimit -n 4096) and try again"
    else:
        fix = "Check the folder, or give another one: wf.run(base=...)"
    return StoreError(f"cannot {what} in {where}: {why}. {fix}.")


def _logger(rundir: Path) -> logging.Logger:
    log = logging.getLogger(f"shoal.run.{rundir.name}.{id(rundir)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        handler = logging.FileHandler(rundir / "shoal.log")
    except OSError as err:
        raise unwritable(rundir, err, "write the run's log") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


@dataclass
class Extras:
    """Run options beyond the node and the policy: stops and the default retry policy."""

    stop_at: float | None = None
    stop_mode: str = "cancel"
    retry: Backoff | None = None
    state_dir: Path | None = None


class Prepared:
    """A checked run with its directory (new, or resumed) and lock, ready to drive."""

    def __init__(
        self,
        *,
        plan: Plan,
        backend: Backend,
        rundir: Path,
        policy: Policy,
        progress: bool,
        extras: Extras,
        lock: Lock,
        rules: list[Rule],
        strategies: list[Strategy],
        tracked: dict[str, Any],
        ids: dict[int, int],
        functions: Functions,
        restore: Snapshot | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.dir = rundir
        self.policy = policy
        self.progress = progress
        self.extras = extras
        self.lock = lock
        self.rules = rules
        self.strategies = strategies
        self.tracked = tracked
        self.ids = ids
        self.functions = functions
        self.restore = restore
        self.log = _logger(rundir)
        self.writer = Writer(rundir, extras.state_dir)
        self.writer.log = self.log
        if extras.state_dir is None:
            warn_filesystem(rundir, self.log)
        else:
            self.log.info("the live store is %s; copied here every few seconds", self.writer.path)

    @classmethod
    def new(
        cls,
        wf: Workflow,
        backend: Backend,
        base: Path,
        policy: Policy,
        progress: bool,
        extras: Extras,
        stored: dict[str, Any],
    ) -> Prepared:
        # The local fork server starts while the workflow is checked.
        backend.boot(wf.has_python())
        lock: Lock | None = None
        try:
            functions = Functions()
            plan = compile_workflow(wf, functions=functions)
            check_resources(plan.records, Pool(tuple(backend.nodes())))
            rundir = new_rundir(base, wf.name)
            lock = Lock(rundir).acquire()
            self = cls(
                plan=plan,
                backend=backend,
                rundir=rundir,
                policy=policy,
                progress=progress,
                extras=extras,
                lock=lock,
                rules=wf.rules,
                strategies=wf.strategies,
                tracked=wf.tracked,
                ids={t.key: t.id for t in wf.tasks if t.id is not None},
                functions=functions,
            )
            self._start()  # workers import while the plan is written to the store
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
                    **recorded(),  # a resume imports what this run imports
                    "options": stored,
                    "tracked": _blob(wf.tracked) if wf.tracked else None,
                },
                nodes,
            )
            self.born = time.time()
            self.writer.add_plan(plan, born=self.born)
            self.writer.publish()
            self.log.info(
                "run %s: %d tasks on %s",
                wf.name,
                len(plan.records),
                "; ".join(n.describe() for n in nodes),
            )
            self._notes()
            return self
        except BaseException:  # nothing half-started stays behind
            backend.close()
            if lock is not None:
                lock.release()
            raise

    def _start(self) -> None:
        self.backend.start(self.dir)
        self.backend.warm(*Driver.workers_wanted(self.plan, self.backend))

    def _notes(self) -> None:
        for note in self.backend.notes():  # said once per run: in the log and on stderr
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
            restore=self.restore,
            born=getattr(self, "born", None),
            stop_at=self.extras.stop_at,
            stop_mode=self.extras.stop_mode,
            default_retry=self.extras.retry,
        )
        state = "crashed"
        try:
            with bar if bar else _null(), _signals(driver):
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
                self.lock.release()
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
        if state == "interrupted":  # said on stderr even without a progress bar
            print(
                f"shoal: run {run.name} was interrupted ({driver.interrupted or 'stopped'}); "
                f"tasks that did not finish have no result. Carry it on with: "
                f"shoal resume {run.dir}",
                file=sys.stderr,
            )
        return run


def _blob(value: Any) -> str:
    import base64

    import cloudpickle

    return base64.b64encode(cloudpickle.dumps(value)).decode()


def _unblob(text: str | None) -> Any:
    import base64

    import cloudpickle

    return cloudpickle.loads(base64.b64decode(text)) if text else None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def _signals(driver: Driver) -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP (the terminal closed, the SSH connection dropped) stop the
    run gracefully (the driver finishes or stops the running tasks and records the run as
    interrupted); a second signal stops it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            _detach_terminal()
        if driver.signalled:
            raise KeyboardInterrupt(f"stopped by a second {name}")
        driver.signalled = name

    # A driver started under nohup (SIGHUP ignored) keeps ignoring it.
    chosen = [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
    old = {sig: signal.signal(sig, on_signal) for sig in chosen}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _detach_terminal() -> None:
    """After a hang-up the terminal is gone and writing to it fails (EIO): what the driver
    would print from now on (the progress bar, the summary) goes nowhere; shoal.log has it."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                os.dup2(null, fd)
    os.close(null)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


STORED = (
    "cpus",
    "gpus",
    "memory",
    "policy",
    "reserve_after",
    "pin",
    "launcher",
    "prefetch",
    "prefetch_window",
    "order",
    "stop_mode",
    "retries",
    "backoff",
    "retry_on",
    "escalate",
    "state_dir",
)


def prepare(
    wf: Workflow | None,
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
    prefetch_window: float | None = None,
    order: str = "fifo",
    stop_at: float | None = None,
    stop_mode: str = "cancel",
    retries: int = 0,
    backoff: Any = 0.0,
    retry_on: Any = (),
    escalate: Any = None,
    state_dir: str | os.PathLike[str] | None = None,
    _resume: Path | None = None,
) -> Prepared:
    if _resume is None and not isinstance(wf, Workflow):
        raise DefinitionError(f"shoal.run needs a Workflow, got {type(wf).__name__}")
    if stop_mode not in ("cancel", "finish"):
        raise DefinitionError(
            f"stop_mode must be 'cancel' (stop running tasks when the run is stopped, the "
            f"default) or 'finish' (let them finish), got {stop_mode!r}"
        )
    stop = _deadline(stop_at)
    default = make_retry("run options", retries, backoff, retry_on, escalate)
    extras = Extras(stop, stop_mode, default, Path(state_dir) if state_dir else None)
    be = make_backend(backend, cpus, gpus, memory, pin, launcher)
    show = settings.cli if progress is None else progress
    depth = be.prefetch if prefetch is None else prefetch
    pol = Policy(
        mode=policy,
        reserve_after=reserve_after,
        order=order,
        prefetch=depth,
        prefetch_window=be.prefetch_window if prefetch_window is None else prefetch_window,
        follow="follow" in be.capabilities,
    )
    given = {**locals(), "state_dir": os.fspath(state_dir) if state_dir else None}
    stored = {k: given[k] for k in STORED if _jsonable(given[k])}
    if _resume is not None:
        return resumed(_resume, be, pol, show, extras)
    assert wf is not None
    return Prepared.new(wf, be, Path(base or os.getcwd()), pol, show, extras, stored)


def _jsonable(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _deadline(stop_at: Any) -> float | None:
    """``stop_at``: epoch seconds, a datetime, or None; a deadline from ``settings`` (the
    command line's ``--time-left``) applies when none is given."""
    import datetime

    if stop_at is None:
        return settings.stop_at
    if isinstance(stop_at, datetime.datetime):
        return stop_at.timestamp()
    if isinstance(stop_at, bool) or not isinstance(stop_at, int | float):
        raise DefinitionError(
            f"stop_at must be a time (epoch seconds or a datetime), got {stop_at!r}"
        )
    return float(stop_at)


def resumed(
    rundir: Path, backend: Backend, policy: Policy, progress: bool, extras: Extras
) -> Prepared:
    """The run in ``rundir``, read back from its store, ready to go on where it stopped."""
    lock = Lock(rundir).acquire()
    try:
        if extras.state_dir is not None:  # the newer of the two stores is the truth
            sync(rundir / "shoal.db", live_path(rundir, extras.state_dir))
        snap = load(rundir)
        plan = snap.plan
        check_resources(plan.records, Pool(tuple(backend.nodes())))
        unfinished = [
            (r.name, r.id, r.payload)
            for r, st in zip(plan.records, snap.states, strict=True)
            if not st.terminal
        ]
        check(rundir, snap.meta, plan.functions, unfinished, snap.meta.get("tracked"))
        functions = Functions()
        functions.count = len(plan.functions)
        rules: list[Rule] = []
        strategies: list[Strategy] = []
        missing = []
        for label, kind, payload, _ in snap.rules:
            obj = load_rule(payload)
            if obj is None:
                missing.append(label)
            elif kind == "strategy":
                strategies.append(obj)
            else:
                rules.append(obj)
        p = Prepared(
            plan=plan,
            backend=backend,
            rundir=rundir,
            policy=policy,
            progress=progress,
            extras=extras,
            lock=lock,
            rules=rules,
            strategies=strategies,
            tracked=_unblob(snap.meta.get("tracked")) or {},
            ids={},
            functions=functions,
            restore=snap,
        )
    except BaseException:
        lock.release()
        raise
    # The fork server also watches the driver's own children (zygote.py): start it even for
    # a run that has only isolated tasks left.
    backend.boot(any(r.kind != "command" for r in plan.records))
    p._start()
    resumes = int(snap.meta.get("resumes", 0)) + 1
    p.writer.set_meta(
        state="running",
        pid=os.getpid(),
        host=socket.gethostname(),
        resumes=resumes,
        ended=None,
        stop_reason=None,  # a run stopped on purpose goes on when it is resumed
    )
    done = sum(1 for x in snap.states if x is State.SUCCEEDED)
    p.log.info(
        "resumed (%d): %d tasks, %d succeeded before, %d attempts lost with the last driver",
        resumes,
        len(plan.records),
        done,
        snap.lost,
    )
    for label in missing:
        p.log.warning(
            "rule or strategy %r could not be restored; the run goes on without it", label
        )
    p._notes()
    return p


def _check_options(options: dict[str, Any]) -> None:
    import inspect

    known = [n for n in inspect.signature(prepare).parameters if n not in ("wf", "_resume")]
    for name in options:
        if name not in known:  # the same did-you-mean as task options (errors.hint)
            raise DefinitionError(
                f"unknown run option {name!r}{hint(name, known)}. Run options are: "
                f"{', '.join(known)}"
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
    slot, from the average run time of tasks of that shape); ``stop_at`` (a deadline: epoch
    seconds or a datetime) and ``stop_mode`` ('cancel' the running tasks on a stop, or let
    them 'finish'); ``retries``, ``backoff``, ``retry_on`` and ``escalate`` (a retry policy
    for tasks without their own); ``state_dir`` (keep the live store on node-local disk).
    """
    _check_options(options)
    p = prepare(wf, **options)
    r = Run(p.dir, wf.name, ids=p.ids)
    settings.runs.append(r)
    return p.execute(r)


def resume(run_dir: str | os.PathLike[str], **options: Any) -> Run:
    """Go on with the run in ``run_dir`` after its driver died or was stopped.

    Tasks that succeeded are not run again (their results are reused); attempts that were
    running are recorded as lost and run again; work added by Responses, rules, strategies and
    requests is there, and so is the memory of rules and strategies. The run's options (node
    size, policy, retries) are those it was started with, unless given here.
    """
    rundir = Path(run_dir).absolute()  # the run goes on in its own working directory
    _check_options(options)
    if not (rundir / "shoal.db").exists():
        raise StoreError(
            f"no shoal database in {rundir}: give a run directory (a folder named "
            "<workflow>-<timestamp> holding shoal.db)"
        )
    verify(rundir)  # a damaged store is refused before anything reads it
    meta = _stored_meta(rundir)
    stored = meta.get("options") or {}
    with restored(meta) as changed:
        p = prepare(None, **{**stored, **options, "_resume": rundir})
        if changed:
            p.log.info("as when the run started: %s", changed)
        r = Run(p.dir, p.plan.name)
        settings.runs.append(r)
        return p.execute(r)


def _stored_meta(rundir: Path) -> dict[str, Any]:
    from shoal.store.queries import Reader

    with Reader(rundir) as r:
        return r.meta()


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
