"""A run's session: its directory (new, or resumed), lock, log and store, and the loop driving it.

:meth:`Session.new` checks a workflow and creates its run directory; :meth:`Session.resumed`
reads a run back from its store. Either way :meth:`Session.execute` drives it to the end with
the signals that stop it gracefully, and records how it ended.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend
from shoal.core.policy import Policy
from shoal.core.resources import Pool
from shoal.core.states import State
from shoal.errors import DefinitionError, StoreError
from shoal.runtime.driver import Driver
from shoal.runtime.imports import check, recorded
from shoal.runtime.options import StopMode
from shoal.runtime.progress import Progress, summary
from shoal.runtime.run import Run
from shoal.runtime.work import HandleIds, check_resources, workers_wanted
from shoal.spec.lower import Functions, Plan
from shoal.spec.retry import Backoff
from shoal.spec.steer import Rule, Strategy
from shoal.spec.workflow import Workflow, compile_workflow
from shoal.store.fs import live_path, sync, warn_filesystem
from shoal.store.lock import Lock
from shoal.store.recover import Snapshot, load, load_rule
from shoal.store.writer import Writer

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
    stop_mode: StopMode = "cancel"
    retry: Backoff | None = None
    state_dir: Path | None = None


@dataclass
class Contents:
    """What a session runs: the plan and what steers it, new or read back from the store."""

    plan: Plan
    functions: Functions
    rules: list[Rule]
    strategies: list[Strategy]
    tracked: dict[str, Any]
    ids: HandleIds  # handle key -> id (a new run's tasks; none for a resumed one)
    restore: Snapshot | None = None


class Session:
    """A checked run with its directory (new, or resumed) and lock, ready to drive."""

    def __init__(
        self,
        contents: Contents,
        backend: Backend,
        rundir: Path,
        policy: Policy,
        progress: bool,
        extras: Extras,
        lock: Lock,
    ) -> None:
        self.contents = contents
        self.plan = contents.plan
        self.ids = contents.ids
        self.backend = backend
        self.dir = rundir
        self.policy = policy
        self.progress = progress
        self.extras = extras
        self.lock = lock
        self.born: float | None = None  # a new run's plan was stored then
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
    ) -> Session:
        # The local fork server starts while the workflow is checked.
        backend.boot(wf.has_python())
        lock: Lock | None = None
        try:
            functions = Functions()
            plan = compile_workflow(wf, functions=functions)
            check_resources(plan.records, Pool(tuple(backend.nodes())))
            rundir = new_rundir(base, wf.name)
            lock = Lock(rundir).acquire()
            ids = HandleIds((t.key, t.id) for t in wf.tasks if t.id is not None)
            contents = Contents(plan, functions, wf.rules, wf.strategies, wf.tracked, ids)
            self = cls(contents, backend, rundir, policy, progress, extras, lock)
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
        self.backend.warm(*workers_wanted(self.plan, self.backend))

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
            rules=self.contents.rules,
            strategies=self.contents.strategies,
            tracked=self.contents.tracked,
            ids=self.ids,
            functions=self.contents.functions,
            restore=self.contents.restore,
            born=self.born,
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
                # The counts, so that a look at an ended run need not count a million rows
                tally = {k.value: n for k, n in driver.scheduler.counts.items() if n}
                self.writer.set_meta(state=state, ended=time.time(), counts=tally)
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


def resumed(
    rundir: Path, backend: Backend, policy: Policy, progress: bool, extras: Extras
) -> Session:
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
        tracked = _unblob(snap.meta.get("tracked")) or {}
        contents = Contents(plan, functions, rules, strategies, tracked, HandleIds(), snap)
        p = Session(contents, backend, rundir, policy, progress, extras, lock)
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
        counts=None,  # they change from now on; status.json has them while it runs
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
