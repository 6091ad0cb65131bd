"""The Dask backend: ready shoal tasks run on the workers of a Dask distributed cluster.

``DaskBackend(address=...)`` (or ``SHOAL_DASK_ADDRESS``, a ``scheduler_file``, a ``cluster``
object such as a ``LocalCluster`` or a ``dask_jobqueue`` cluster, or a ``client``). Each worker
is a node of shoal's scheduler: its cores are the worker's ``cores`` resource (or its thread
count), its GPUs the ``gpus`` resource. Start workers so that both agree, e.g.::

    dask worker tcp://HOST:8786 --name w1 --nthreads 8 --resources "cores=8,gpus=1"

shoal's core stays the authority on dependencies, retries and state: Dask only ever receives
ready tasks, each pinned to the address of the worker its placement names and annotated with
the resources it holds (``cores``, ``gpus``, when the workers declare them). The backend sets
the scheduler's ``allowed_failures`` to 0 while it runs (and puts the old value back when it
closes), so that a task whose worker dies is reported at once (an attempt ``lost``, which the
task's retry policy may run again) rather than rerun by Dask behind shoal's back.

Workers that go away: Dask pins a task to a worker's *address*, and a restarted worker has a
new one. So a job for a worker that is away waits in the backend until a worker of that name
is back, and is then sent to its new address; a job sent to an address that disappeared
before it began comes back unstarted (``returned``, costing no attempt). A worker away for
longer than ``grace`` seconds has left for good: its CPU jobs run on the other workers (Dask's
resource accounting keeps them within their cores), its GPU jobs fail saying so.

A job queued behind another (``after``: the core prefetches it onto a busy slot) is sent with
the future of the one ahead of it as an argument, so that Dask starts it only once that one
ended (on the worker, without a round trip through shoal): Dask, which knows nothing of slots,
would otherwise start it at once on a free thread, beside the task it was meant to follow (and
a cancel of it would then end that worker, and the innocent task with it). When the one ahead
failed in Dask itself (its worker died, it was cancelled), the follower never began: it comes
back unstarted.

Python tasks run in the worker's threads (their function is sent to each worker once), or in
a process of their own when they need an environment of their own (``env=``, GPUs, several
cores: ``OMP_NUM_THREADS`` is per process); commands run as child processes of the worker.

Stopping an attempt (cancel, timeout) asks its worker what it executes (``job.claim``):
a process is stopped by its process group (SIGTERM, SIGKILL 3 s later) and reports its own
end; an attempt that has not begun never does (a job the core has queued is reported
cancelled, one the core counts as started comes back unstarted, so that its clock, which ran
while Dask kept it waiting, costs nothing); a Python task executing in a worker thread cannot
be interrupted, so that worker process is ended and its nanny starts a fresh one: the task is
reported stopped, every other attempt of the run on that worker comes back unstarted.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shoal.backends.base import Backend, Job
from shoal.backends.env import gpu_vars, thread_vars
from shoal.backends.execute import attempt_vars
from shoal.core.events import Outcome
from shoal.core.resources import Node
from shoal.errors import BackendError, DefinitionError
from shoal.spec.kinds import Failure

LOST = ("KilledWorker", "CommClosedError", "FutureCancelledError", "CancelledError")
ASK = 10.0  # seconds a worker has to answer ``claim`` before it is taken for gone


def _imports() -> Any:
    try:
        import distributed
    except ImportError:
        raise BackendError(
            "the Dask backend needs dask.distributed: pip install 'shoal[dask]'"
        ) from None
    return distributed


def worker_nodes(info: dict[str, Any]) -> list[Node]:
    """shoal nodes from ``client.scheduler_info()``: one per worker, named by its name."""
    nodes = []
    for addr, w in sorted(info.get("workers", {}).items(), key=lambda kv: str(kv[1].get("name"))):
        res = w.get("resources") or {}
        cores = int(res.get("cores", w.get("nthreads", 1)))
        gpus = int(res.get("gpus", 0))
        memory = int(w.get("memory_limit", 0) or 0) // 2**20
        nodes.append(
            Node(str(w.get("name", addr)), tuple(range(cores)), tuple(range(gpus)), memory)
        )
    return nodes


def _connect(
    distributed: Any,
    address: str | None,
    scheduler_file: str | None,
    cluster: Any,
    timeout: float,
    security: Any,
) -> Any:
    """A client of the scheduler of ``cluster``, at ``address`` (or ``SHOAL_DASK_ADDRESS``) or
    named by ``scheduler_file``."""
    address = address or os.environ.get("SHOAL_DASK_ADDRESS")
    if cluster is not None:
        return distributed.Client(cluster)
    if address or scheduler_file:
        try:
            return distributed.Client(
                address,
                scheduler_file=scheduler_file,
                timeout=timeout,
                security=security,
            )
        except (OSError, TimeoutError) as err:
            raise BackendError(
                f"cannot reach the Dask scheduler at {address or scheduler_file}: {err}"
            ) from None
    raise BackendError(
        "the Dask backend needs a scheduler: DaskBackend(address='tcp://host:8786'), "
        "scheduler_file=, cluster= (e.g. a LocalCluster) or client=, or "
        "SHOAL_DASK_ADDRESS"
    )


class Spawned(Protocol):
    """The processes of a cluster that shoal started for this backend (its scheduler and
    workers, e.g. as Slurm steps: slurm/dask_workers.py), looked after while it runs."""

    def revive(self, say: Callable[[str], None]) -> None:
        """Start again those that ended, saying so with ``say``."""

    def stop(self) -> None:
        """Stop them all (the backend closes)."""


def _set_allowed_failures(dask_scheduler: Any, value: int = 0) -> int:
    old = int(dask_scheduler.allowed_failures)
    dask_scheduler.allowed_failures = value
    return old


def security(folder: Path) -> tuple[Any, list[str]]:
    """A fresh TLS identity for one run's own scheduler and workers (Dask's
    ``Security.temporary()``, written to ``folder`` readable by this user only): the client's
    ``Security`` and the command-line options of ``dask scheduler`` and ``dask worker``. Only
    holders of the key can connect, so nobody else can run code on the workers."""
    from distributed import security as dsec

    Security: Any = dsec.Security
    temp = Security.temporary()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    for path, text in ((cert, temp.tls_scheduler_cert), (key, temp.tls_scheduler_key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    sec = Security(
        require_encryption=True,
        tls_ca_file=str(cert),
        tls_client_cert=str(cert),
        tls_client_key=str(key),
    )
    return sec, ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]


class DaskBackend(Backend):
    """Runs attempts on Dask workers; see the module's docstring."""

    name = "dask"
    capabilities = frozenset({"python", "command", "cancel", "prefetch"})
    # Tasks queued behind running ones go to Dask at once: the worker starts each the moment
    # the resources of the one before are free, without a round trip through the driver.
    prefetch = 256
    prefetch_window = 1.0  # a round trip through the Dask scheduler takes milliseconds

    def __init__(
        self,
        address: str | None = None,
        *,
        scheduler_file: str | None = None,
        cluster: Any = None,
        client: Any = None,
        grace: float = 30.0,
        wait_for: int = 1,
        timeout: float = 60.0,
        python: str = sys.executable,
        security: Any = None,
    ) -> None:
        distributed = _imports()
        self._own_client = client is None
        if client is None:
            client = _connect(distributed, address, scheduler_file, cluster, timeout, security)
        self.client = client
        if wait_for:
            self._wait_for(wait_for, timeout)
        info = client.scheduler_info()
        self._nodes = worker_nodes(info)
        if not self._nodes:
            raise BackendError("the Dask cluster has no workers")
        self.declared = all("cores" in (w.get("resources") or {}) for w in info["workers"].values())
        self.grace = grace
        self.python = python  # the workers' interpreter, for tasks in their own process
        self.functions: dict[int, bytes] = {}
        self._scattered: dict[int, Any] = {}
        self._attempts()
        self._follow_workers(info)
        self.rundir: Path | None = None
        self._notes: list[str] = []
        self._said: set[str] = set()
        self.spawned: Spawned | None = None  # what started the cluster's processes, if shoal did
        self.completed = distributed.as_completed([], with_results=True, raise_errors=False)
        self.wakeup = threading.Event()
        self.closing = False
        self.collector = threading.Thread(target=self._collect, name="shoal-dask", daemon=True)
        self.collector.start()
        self._allowed = client.run_on_scheduler(_set_allowed_failures)
        if self._allowed:
            self._notes.append(
                f"the Dask scheduler's allowed_failures was {self._allowed}; shoal sets it to 0 "
                "while it runs (a lost worker is reported to shoal, whose retry policy decides) "
                "and puts it back when it closes"
            )
        if not self.declared:
            self._notes.append(
                "the Dask workers declare no 'cores' resource: each worker counts as many cores "
                "as it has threads (start workers with --resources cores=N,gpus=G)"
            )

    def _wait_for(self, workers: int, timeout: float) -> None:
        """Wait until the cluster has ``workers`` workers; closing a client of its own if not."""
        try:
            self.client.wait_for_workers(workers, timeout=timeout)
        except Exception as err:
            if self._own_client:
                self.client.close()
            raise BackendError(
                f"the Dask cluster has fewer than {workers} workers after {timeout:g} s "
                f"({type(err).__name__}); start workers (or scale the cluster) first"
            ) from None

    def _attempts(self) -> None:
        """The bookkeeping of attempts sent to Dask (guarded by ``lock``)."""
        self.futures: dict[tuple[int, int], Any] = {}
        self.jobs: dict[tuple[int, int], Job] = {}
        self.bound: dict[tuple[int, int], str] = {}  # the worker address each was sent to
        self.done: set[tuple[int, int]] = set()  # reported already (stopped, returned, lost)
        self.claimed: dict[tuple[int, int], bool] = {}  # stopped before it began: queued?
        self.outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.lock = threading.RLock()
        # task -> its attempt submitted whose outcome is not reported yet
        self.open: dict[int, int] = {}
        # follower (task, attempt) -> the leader's (task, attempt) it was queued behind: a
        # task id alone would confuse a leader's retry with the attempt the follower followed
        self.leader: dict[tuple[int, int], tuple[int, int]] = {}
        self.idents: dict[str, tuple[int, int]] = {}  # future key -> (task, attempt)
        # leader (task, attempt) -> followers' outcomes waiting for the leader's
        self.held: dict[tuple[int, int], list[tuple[Job, Outcome]]] = {}
        self.preloaded: tuple[str, ...] = ()  # modules each worker imports at start (preload)
        # follower (task, attempt) -> the future of the job it was sent behind (see the doc)
        self.behind: dict[tuple[int, int], Any] = {}

    def _follow_workers(self, info: dict[str, Any]) -> None:
        """Which worker is where, from ``client.scheduler_info()`` (see the module's doc)."""
        self.addr: dict[str, str] = {}  # worker name -> its address now (absent: away)
        self.dead: set[str] = set()  # addresses of workers that ended: never send there
        self.missing: dict[str, float] = {}  # worker name -> since when it is away
        self.threads: dict[str, int] = {}  # worker address -> its number of threads
        self.waiting: dict[str, list[Job]] = {}  # jobs for a worker that is away
        self._refresh(info)
        self._checked = time.monotonic()

    def reorder(self, names: Sequence[str]) -> None:
        """Put the nodes in the order of ``names`` (every worker's name, once): a backend that
        hands its jobs to this one places them by its own node order."""
        by_name = {n.name: n for n in self._nodes}
        self._nodes = [by_name[name] for name in names]

    # -- contract ---------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def notes(self) -> list[str]:
        return list(self._notes)

    def preload(self, modules: tuple[str, ...]) -> None:
        self.preloaded = tuple(dict.fromkeys((*self.preloaded, *modules)))

    def start(self, rundir: Path) -> None:
        self.rundir = rundir
        if self.preloaded:  # each worker imports them now, not with its first task
            from shoal.backends.dask import job as daskjob

            try:
                got = self.client.run(daskjob.preload, self.preloaded, callback_timeout=ASK)
            except Exception as err:  # workers that cannot: they import with their first task
                got = {"": [f"{type(err).__name__}: {err}"]}
            for why in sorted({w for failed in got.values() for w in failed}):
                self._say(f"a Dask worker could not preload {why}; its tasks will say why")

    def define(self, function: int, payload: bytes) -> None:
        self.functions[function] = payload

    def submit(self, jobs: Sequence[Job]) -> None:
        with self.lock:  # before any is sent: a follower may come before its leader
            for job in jobs:
                self.open[job.task] = job.attempt
            for job in jobs:
                self._open(job)
        placed = [(job, where) for job in jobs if (where := self._placed(job)) is not None]
        for wave in self._waves(placed):
            groups: dict[tuple[Any, ...], list[Job]] = {}
            for job, where in wave:
                key = (job.kind, self._own(job), where, self._shape(job))
                groups.setdefault(key, []).append(job)
            for (kind, own, where, res), batch in groups.items():
                self._send(kind, own, where, res, batch)

    def _waves(self, placed: list[tuple[Job, str]]) -> list[list[tuple[Job, str]]]:
        """The jobs in waves: a follower sent with its leader's future (see ``_leader``)
        goes in a wave after its leader's, so that the future exists by then; all in one
        wave when none is."""
        depth: dict[int, int] = {}
        waves: list[list[tuple[Job, str]]] = [[]]
        for job, where in placed:
            d = 0
            if job.after in depth and self._behind(where):
                d = depth[job.after] + 1
                if d == len(waves):
                    waves.append([])
            depth[job.task] = d
            waves[d].append((job, where))
        return waves

    def _behind(self, where: str) -> bool:
        """Whether a follower sent to ``where`` waits in Dask for its leader's future: unless
        that worker has one thread, which its leader holds until it ends."""
        return not where or self.threads.get(where, 0) != 1

    def _placed(self, job: Job) -> str | None:
        """The address of the worker that ``job`` is sent to ("": any worker), or None when it
        is not sent now: refused (several ranks or nodes), waiting for its worker to come back,
        or lost with it (each reported or kept here)."""
        if job.ranks > 1 or len(job.placement.slots) > 1:
            why = (
                "the Dask backend runs single-rank tasks on one worker; run MPI "
                "tasks with the Slurm backend (or locally)"
            )
            self._emit(
                job, Outcome.unstarted(job.task, job.attempt, time.time(), Failure.ERROR, why)
            )
            return None
        node = self._node(job)
        where = self.addr.get(node)
        if where is not None:
            return where
        if not self._gone(node):  # away for now: wait for it to come back
            with self.lock:
                self.waiting.setdefault(node, []).append(job)
                self._open(job)
            return None
        if job.placement.gpus:
            why = (
                f"its Dask worker {node} left and did not come back within "
                f"{self.grace:g} s, and its GPUs are nowhere else"
            )
            self._emit(job, self._lost(job.task, job.attempt, why), hold=False)
            return None
        return ""  # any worker: Dask's resource accounting keeps them within cores

    def _shape(self, job: Job) -> tuple[tuple[str, int], ...]:
        """The Dask resources that ``job`` holds, when the workers declare them."""
        if not self.declared:
            return ()
        resources = {"cores": len(job.placement.cores)}
        if job.placement.gpus:
            resources["gpus"] = len(job.placement.gpus)
        return tuple(sorted(resources.items()))

    def _send(
        self, kind: str, own: bool, where: str, res: tuple[tuple[str, int], ...], batch: list[Job]
    ) -> None:
        """Send a batch of jobs of one kind, worker and resources with one ``client.map``."""
        keys = [f"shoal-{j.task}-{j.attempt}-{id(j):x}" for j in batch]
        common = {
            "key": keys,
            "workers": [where] if where else None,
            "allow_other_workers": False,
            "resources": dict(res) or None,
            "pure": False,
            "retries": 0,
        }
        with self.lock:
            ahead = [self._leader(j, where) for j in batch]
        futures = self._map(kind, own, keys, batch, common, ahead)
        for job, fut, lead in zip(batch, futures, ahead, strict=True):
            ident = (job.task, job.attempt)
            with self.lock:
                self.futures[ident] = fut
                self.jobs[ident] = job
                self.bound[ident] = where
                if lead is not None:
                    self.behind[ident] = lead
                self._open(job)
            self.idents[fut.key] = ident
        self.completed.update(futures)  # results come back in batches, in one thread
        self.wakeup.set()

    def _leader(self, job: Job, where: str) -> Any:
        """The future of the unreported job ``job`` is queued behind, if it was sent (lock
        held): Dask starts ``job`` once that future is done. None also when ``job`` goes to a
        worker of one thread, which the job ahead of it holds until it ends: there Dask keeps
        the follower waiting on the worker, as fast as a task can follow another."""
        lead = self._ahead(job)
        if lead is None or not self._behind(where):
            return None
        return self.futures.get(lead)

    def _map(
        self,
        kind: str,
        own: bool,
        keys: list[str],
        batch: list[Job],
        common: dict[str, Any],
        ahead: list[Any],
    ) -> list[Any]:
        """The futures of a batch: what job.py runs on the worker, mapped over the jobs."""
        from shoal.backends.dask import job as daskjob

        futures: list[Any]
        if own:  # a Python task in a process of its own
            futures = self.client.map(
                daskjob.isolated,
                keys,
                [self._function(j.function) for j in batch],
                [j.payload for j in batch],
                [self._env(j) for j in batch],
                [j.folder for j in batch],
                [self.python] * len(batch),
                ahead,
                **common,
            )
        elif kind == "python":
            futures = self.client.map(
                daskjob.python,
                keys,
                [self._function(j.function) for j in batch],
                [j.payload for j in batch],
                [j.folder for j in batch],
                [j.task for j in batch],
                [j.attempt for j in batch],
                ahead,
                **common,
            )
        else:
            futures = self.client.map(
                daskjob.command,
                keys,
                [j.argv for j in batch],
                [j.shell for j in batch],
                [j.workdir for j in batch],
                [self._env(j) for j in batch],
                [j.folder for j in batch],
                ahead,
                **common,
            )
        return futures

    def cancel(self, task: int, attempt: int) -> None:
        ident = (task, attempt)
        with self.lock:
            job = self.jobs.get(ident)
            if job is None:  # waiting for its worker to come back: never sent
                job = self._unwait(ident)
                if job is not None:
                    self._stopped_unstarted(job, self._queued(job))
                return
            fut = self.futures.get(ident)
            if fut is None or ident in self.done:
                return
            queued = self._queued(job)
            where = self.bound.get(ident, "")
        answer, started = self._claim(where or self._address(self._node(job)), fut.key)
        if answer == "process":  # being stopped: its own reply (a signal) follows
            return
        if answer == "thread":  # that worker process ends now
            self._restarted(where, ident, started)
            return
        if answer == "absent":  # not begun (it never will: it replies "dropped"), or ended
            with self.lock:
                if ident in self.futures and ident not in self.done:
                    self.claimed[ident] = queued
            return
        # its worker cannot be asked: gone, so the attempt cannot be running anywhere
        with self.lock:
            if ident not in self.futures or ident in self.done:
                return
            self.done.add(ident)
        fut.cancel()
        self._stopped_unstarted(job, queued)

    def poll(self, timeout: float) -> list[Outcome]:
        self._check_workers()
        out = self._drain()
        if out or timeout <= 0:
            return out
        if self.waiting or self.missing:  # look at the workers again soon
            timeout = min(timeout, 0.25)
        try:
            first = self.outbox.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self._drain()]

    @classmethod
    def in_allocation(cls, *args: Any, **kwargs: Any) -> DaskBackend:
        """Moved: Dask workers started as Slurm job steps are Slurm's business."""
        raise DefinitionError(
            "DaskBackend.in_allocation(...) moved to the Slurm backend, which starts the "
            "workers as job steps: from shoal.backends.slurm import in_allocation; "
            "in_allocation(...) takes the same arguments"
        )

    def close(self) -> None:
        if self.closing and not self._own_client and self.spawned is None:
            return
        self.closing = True
        self.wakeup.set()
        with self.lock:
            futures = list(self.futures.values())
            running = [
                (self.bound.get(i, ""), f.key)
                for i, f in self.futures.items()
                if i not in self.done
                and (self.jobs[i].kind == "command" or self._own(self.jobs[i]))
            ]
            self.futures.clear()
            self.waiting.clear()
            self.behind.clear()
        for where, key in running:  # processes on the workers: stop them too
            if where:
                self._claim(where, key, restart=False)
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures, force=True)
        deadline = time.monotonic() + 5  # workers ended to stop a task: let them leave, so
        while self.dead and time.monotonic() < deadline:  # that the next run never picks one
            try:
                if not self.dead & set(self.client.scheduler_info()["workers"]):
                    break
            except Exception:
                break
            time.sleep(0.1)
        if self._allowed:
            with contextlib.suppress(Exception):
                self.client.run_on_scheduler(_set_allowed_failures, value=self._allowed)
            self._allowed = 0
        if self._own_client:
            with contextlib.suppress(Exception):
                self.client.close()
            self._own_client = False
        if self.spawned is not None:  # the cluster's processes, if shoal started them
            self.spawned.stop()
            self.spawned = None
        self.collector.join(2)

    # -- helpers ----------------------------------------------------------------------------
    def _drain(self) -> list[Outcome]:
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def _node(self, job: Job) -> str:
        return self._nodes[job.placement.slots[0].node].name

    @staticmethod
    def _own(job: Job) -> bool:
        """Whether a Python job runs in a process of its own on the worker."""
        return job.kind == "python" and bool(
            job.env or job.placement.gpus or job.isolate or job.cpus > 1
        )

    def _open(self, job: Job) -> None:
        """Note ``job`` as submitted and unreported, with the attempt of the task it is
        queued behind if that one is still unreported (call with the lock held)."""
        ident = (job.task, job.attempt)
        self.open[job.task] = job.attempt
        if job.after is not None and ident not in self.leader:
            ahead = self.open.get(job.after)
            if ahead is not None:
                self.leader[ident] = (job.after, ahead)

    def _ahead(self, job: Job) -> tuple[int, int] | None:
        """The unreported attempt that ``job`` is queued behind, if any (lock held)."""
        lead = self.leader.get((job.task, job.attempt))
        if lead is not None and self.open.get(lead[0]) == lead[1]:
            return lead
        return None

    def _close(self, job: Job) -> None:
        """Forget ``job`` as unreported (lock held)."""
        if self.open.get(job.task) == job.attempt:
            del self.open[job.task]
        self.leader.pop((job.task, job.attempt), None)

    def _queued(self, job: Job) -> bool:
        """Whether the core still has ``job`` queued behind the task ahead of it."""
        with self.lock:
            return self._ahead(job) is not None

    def _function(self, fid: int) -> Any:
        """The function's payload for a task: scattered to the workers once, or, while a
        worker is away (scatter would wait for it) or when the workers that held it have all
        gone (Dask would cancel the tasks that use it), the bytes themselves."""
        fut = self._scattered.get(fid)
        if fut is not None and fut.status == "finished":
            return fut
        if self.missing:
            return self.functions[fid]
        try:
            fut = self._scattered[fid] = self.client.scatter(
                self.functions[fid], broadcast=True, hash=False, timeout=5
            )
        except Exception:
            return self.functions[fid]
        return fut

    def _env(self, job: Job) -> dict[str, str]:
        env = {**gpu_vars(job.placement.gpus), **thread_vars(job.cpus)}
        env.update(job.env)  # the task's own environment wins, as locally
        env.update(attempt_vars(job.task, job.attempt, job.folder))
        return env

    def _claim(self, where: str, key: str, restart: bool = True) -> tuple[str, float | None]:
        """Ask the worker at ``where`` to stop attempt ``key`` (job.claim); ("gone", None)
        when it cannot be asked."""
        from shoal.backends.dask import job as daskjob

        if not where or where in self.dead:
            return "gone", None
        try:
            got = self.client.run(
                daskjob.claim, key, restart, workers=[where], callback_timeout=ASK
            )
        except Exception:  # the worker is gone (or ended while answering)
            return "gone", None
        answer = got.get(where)
        if not answer:
            return "gone", None
        return str(answer[0]), answer[1]

    def _restarted(self, where: str, target: tuple[int, int], started: float | None) -> None:
        """The worker at ``where`` ends to stop ``target``: report it stopped, and every other
        attempt of this run sent there as given back unstarted (the contract's rule: a kill is
        charged to the task executing, and only to it)."""
        now = time.time()
        with self.lock:
            self._forget(where)
            others = [
                (i, self.jobs[i])
                for i, w in self.bound.items()
                if w == where and i != target and i not in self.done and i in self.jobs
            ]
            self.done.add(target)
            self.done.update(i for i, _ in others)
            job = self.jobs.get(target)
        if job is not None:
            why = "stopped: its Dask worker process was ended (a Python task in a thread)"
            o = Outcome(target[0], target[1], False, started, now, Failure.CANCELLED, why)
            self._emit(job, o, hold=False)
        for (task, attempt), j in others:
            self._emit(j, self._returned(task, attempt), hold=False)

    def _forget(self, where: str) -> None:
        """The worker at ``where`` ended: send nothing more there (its successor, started by
        its nanny, has another address)."""
        with self.lock:
            self.dead.add(where)
            for name, addr in list(self.addr.items()):
                if addr == where:
                    del self.addr[name]
                    self.missing.setdefault(name, time.monotonic())

    def _stopped_unstarted(self, job: Job, queued: bool) -> None:
        """Report an attempt stopped before it began: cancelled while the core had it queued;
        else given back unstarted (the core then decides: cancelled, or ready again after a
        timeout that ran while Dask kept it waiting)."""
        if queued:
            o = Outcome.unstarted(
                job.task, job.attempt, time.time(), Failure.CANCELLED, "cancelled before it started"
            )
        else:
            o = self._returned(job.task, job.attempt)
        self._emit(job, o, hold=False)

    def _unwait(self, ident: tuple[int, int]) -> Job | None:
        with self.lock:
            for jobs in self.waiting.values():
                for j in jobs:
                    if (j.task, j.attempt) == ident:
                        jobs.remove(j)
                        return j
        return None

    def _address(self, name: str) -> str:
        return self.addr.get(name, "")

    def _refresh(self, info: dict[str, Any]) -> None:
        """Which worker name is at which address now."""
        now = time.monotonic()
        seen: dict[str, str] = {}
        threads: dict[str, int] = {}
        for addr, w in info.get("workers", {}).items():
            if addr not in self.dead:
                seen[str(w.get("name", addr))] = str(addr)
                threads[str(addr)] = int(w.get("nthreads", 0) or 0)
        with self.lock:
            self.addr = seen
            self.threads = threads
            for node in self._nodes:
                if node.name in seen:
                    self.missing.pop(node.name, None)
                else:
                    self.missing.setdefault(node.name, now)

    def _gone(self, name: str) -> bool:
        since = self.missing.get(name)
        return since is not None and time.monotonic() - since > self.grace

    def _finished(self, ident: tuple[int, int], fut: Any, value: Any) -> None:
        from shoal.backends.dask import job as daskjob

        with self.lock:
            self.futures.pop(ident, None)
            where = self.bound.pop(ident, "")
            job = self.jobs.pop(ident, None)
            lead = self.behind.pop(ident, None)
            if where and type(value).__name__ == "KilledWorker":  # never send there again
                self._forget(where)
            queued = self.claimed.pop(ident, None)
            if ident in self.done:
                self.done.discard(ident)
                return
        if job is None:
            return
        task, attempt = ident
        node = self._node(job)
        if isinstance(value, tuple) and len(value) == 7:  # what job.py returns
            ok, result, kind, error, started, ended, code = value
            if kind == daskjob.DROPPED:
                self._stopped_unstarted(job, bool(queued))
                return
            o = Outcome(task, attempt, ok, started, ended, kind, error, code, node, result)
        elif lead is not None and lead.status in ("error", "cancelled"):
            # the job it was sent behind failed in Dask (lost, cancelled): it never began
            o = self._returned(task, attempt)
        elif fut.status == "cancelled":
            # shoal did not cancel it: Dask refuses a task pinned to a worker address that
            # has left. It never began: it comes back, and waits for the worker's successor.
            if where:
                self._forget(where)
            o = self._returned(task, attempt)
        else:
            err = value if isinstance(value, BaseException) else fut.exception()
            what = f"{type(err).__name__}: {err}"
            if type(err).__name__ in LOST:
                if self._queued(job):  # it was queued behind another: it never began
                    o = self._returned(task, attempt)
                else:
                    o = self._lost(task, attempt, f"worker {node} was lost ({what})")
            else:  # the worker could not run it (e.g. cannot import the task's module)
                why = f"Dask worker {node} could not run the task: {what}"
                o = Outcome.unstarted(task, attempt, time.time(), Failure.ERROR, why)
        self._emit(job, o, hold=not o.returned)

    def _collect(self) -> None:
        """The thread that receives results: ``as_completed`` gathers them in batches."""
        while not self.closing:
            if self.completed.is_empty():
                self.wakeup.wait(0.2)
                self.wakeup.clear()
                continue
            try:
                for batch in self.completed.batches():
                    for fut, value in batch:
                        ident = self.idents.pop(fut.key, None)
                        if ident is None:
                            continue
                        try:
                            self._finished(ident, fut, value)
                        except Exception as err:  # never lose the outcome of one task
                            job = self.jobs.pop(ident, None)
                            if job is not None:
                                why = f"shoal could not read its outcome: {err}"
                                self._emit(job, self._lost(*ident, why))
                    if self.closing:
                        return
            except Exception:  # the client is closing
                if self.closing:
                    return
                time.sleep(0.05)

    def _emit(self, job: Job, o: Outcome, hold: bool = True) -> None:
        """Report ``o``; a task queued behind another (``after``) is reported only after the
        one ahead of it, as the contract wants, though Dask may finish them in any order."""
        with self.lock:
            ahead = self._ahead(job) if hold else None
            if ahead is not None:
                self.held.setdefault(ahead, []).append((job, o))
                return
            ready = [(job, o)]
            while ready:
                j, out = ready.pop()
                self.outbox.put(out)
                self._close(j)
                ready.extend(self.held.pop((j.task, j.attempt), []))

    @staticmethod
    def _lost(task: int, attempt: int, why: str) -> Outcome:
        return Outcome(task, attempt, False, None, time.time(), Failure.LOST, why)

    @staticmethod
    def _returned(task: int, attempt: int) -> Outcome:
        return Outcome(task, attempt, False, None, time.time(), "", "", returned=True)

    def _say(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self._notes.append(text)

    def _check_workers(self) -> None:
        """Follow the workers: start again a worker process that ended (``spawned``); send the
        jobs that wait for a worker once it is back; give back the jobs sent to an address
        that is gone before they began; after ``grace`` s away, send a worker's jobs to the
        others."""
        now = time.monotonic()
        if now - self._checked < (0.2 if self.waiting or self.missing else 1.0):
            return
        self._checked = now
        if self.spawned is not None and not self.closing:
            self.spawned.revive(self._say)
        try:
            info = self.client.scheduler_info()
        except Exception:
            return
        self._refresh(info)
        with self.lock:
            stale = [
                (ident, self.futures[ident], self.jobs[ident])
                for ident, where in self.bound.items()
                if where
                and where not in info.get("workers", {})
                and ident not in self.done
                and ident in self.futures
                and self.futures[ident].status == "pending"
            ]
            for ident, _, _ in stale:
                self.done.add(ident)
            send: list[Job] = []
            for name in list(self.waiting):
                if name in self.addr or self._gone(name):
                    send.extend(self.waiting.pop(name))
        for (task, attempt), fut, job in stale:  # Dask keeps them for an address never back
            fut.cancel()
            self._emit(job, self._returned(task, attempt), hold=False)
        for name in [n for n in self.missing if self._gone(n)]:
            self._say(
                f"Dask worker {name} left and did not come back within {self.grace:g} s: its "
                "tasks run on the other workers"
            )
        if send:
            with self.lock:
                for j in send:
                    if self.open.get(j.task) == j.attempt:
                        del self.open[j.task]
            self.submit(send)
