"""The Dask backend: ready shoal tasks run on the workers of a Dask distributed cluster.

``DaskBackend(address=...)`` (or ``SHOAL_DASK_ADDRESS``, a ``scheduler_file``, a ``cluster``
object such as a ``LocalCluster`` or a ``dask_jobqueue`` cluster, or a ``client``). Each worker
is a node of shoal's scheduler: its cores are the worker's ``cores`` resource (or its thread
count), its GPUs the ``gpus`` resource. Start workers so that both agree, e.g.::

    dask worker tcp://HOST:8786 --name w1 --nthreads 8 --resources "cores=8,gpus=1"

shoal's core stays the authority on dependencies, retries and state: Dask only ever receives
ready tasks, each pinned to the worker its placement names (``workers=[name]``) and annotated
with the resources it holds (``cores``, ``gpus``, when the workers declare them). The backend
sets the scheduler's ``allowed_failures`` to 0, so that a task whose worker dies is reported at
once (an attempt ``lost``, which the task's retry policy may run again) rather than rerun by
Dask behind shoal's back. A task waiting for a worker that left and did not come back within
``grace`` seconds is reported lost too.

Python tasks run in the worker's threads (their function is sent to each worker once);
commands run as child processes of the worker. Cancelling a command kills its process;
a Python task cannot be interrupted inside a thread, so it is reported cancelled at once and
its result, when it comes, is dropped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend, Job
from shoal.backends.execute import attempt_vars
from shoal.core.events import Outcome
from shoal.core.resources import Node
from shoal.errors import BackendError

GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
LOST = ("KilledWorker", "CommClosedError", "FutureCancelledError", "CancelledError")


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


def _set_allowed_failures(dask_scheduler: Any) -> int:
    old = int(dask_scheduler.allowed_failures)
    dask_scheduler.allowed_failures = 0
    return old


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
    ) -> None:
        distributed = _imports()
        address = address or os.environ.get("SHOAL_DASK_ADDRESS")
        if client is None:
            if cluster is not None:
                client = distributed.Client(cluster)
            elif address or scheduler_file:
                try:
                    client = distributed.Client(
                        address, scheduler_file=scheduler_file, timeout=timeout
                    )
                except (OSError, TimeoutError) as err:
                    raise BackendError(
                        f"cannot reach the Dask scheduler at {address or scheduler_file}: {err}"
                    ) from None
            else:
                raise BackendError(
                    "the Dask backend needs a scheduler: DaskBackend(address='tcp://host:8786'), "
                    "scheduler_file=, cluster= (e.g. a LocalCluster) or client=, or "
                    "SHOAL_DASK_ADDRESS"
                )
            self._own_client = True
        else:
            self._own_client = False
        self.client = client
        if wait_for:
            try:
                client.wait_for_workers(wait_for, timeout=timeout)
            except Exception as err:
                if self._own_client:
                    client.close()
                raise BackendError(
                    f"the Dask cluster has fewer than {wait_for} workers after {timeout:g} s "
                    f"({type(err).__name__}); start workers (or scale the cluster) first"
                ) from None
        info = client.scheduler_info()
        self._nodes = worker_nodes(info)
        # Worker names may be numbers (a LocalCluster's are 0, 1, ...): restrictions need them
        # as they are, while shoal's nodes are named by text.
        self._named: dict[str, Any] = {
            str(w.get("name", addr)): w.get("name", addr) for addr, w in info["workers"].items()
        }
        if not self._nodes:
            raise BackendError("the Dask cluster has no workers")
        self.declared = all(
            "cores" in (w.get("resources") or {})
            for w in client.scheduler_info()["workers"].values()
        )
        self.grace = grace
        self.python = python  # the workers' interpreter, for tasks in their own process
        self.functions: dict[int, bytes] = {}
        self._scattered: dict[int, Any] = {}
        self.futures: dict[tuple[int, int], Any] = {}
        self.jobs: dict[tuple[int, int], Job] = {}
        self.done: set[tuple[int, int]] = set()  # reported already (cancelled or lost)
        self.outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.missing: dict[str, float] = {}
        self._checked = 0.0
        self.rundir: Path | None = None
        self._notes: list[str] = []
        self._procs: list[Any] = []
        self.open: set[int] = set()  # tasks submitted whose outcome is not reported yet
        self.idents: dict[str, tuple[int, int]] = {}  # future key -> (task, attempt)
        self.completed = distributed.as_completed([], with_results=True, raise_errors=False)
        self.wakeup = threading.Event()
        self.closing = False
        self.collector = threading.Thread(target=self._collect, name="shoal-dask", daemon=True)
        self.collector.start()
        self.held: dict[int, list[tuple[Job, Outcome]]] = {}  # followers waiting for a leader
        old = client.run_on_scheduler(_set_allowed_failures)
        if old:
            self._notes.append(
                f"the Dask scheduler's allowed_failures was {old}; shoal set it to 0 so that a "
                "lost worker is reported to shoal, whose retry policy decides"
            )
        if not self.declared:
            self._notes.append(
                "the Dask workers declare no 'cores' resource: each worker counts as many cores "
                "as it has threads (start workers with --resources cores=N,gpus=G)"
            )

    @classmethod
    def in_allocation(
        cls,
        job: str | None = None,
        *,
        host: str | None = None,
        python: str = sys.executable,
        timeout: float = 120.0,
        overlap: bool = False,
        **options: Any,
    ) -> DaskBackend:
        """Persistent Dask workers inside the Slurm allocation the driver runs in: a scheduler
        here, and one worker per node started as a job step (``srun``), holding all of the
        node's cores and GPUs. Python tasks then start in microseconds instead of paying an
        interpreter per task; commands run as child processes of the workers. ``overlap``
        starts the worker steps with ``--overlap``, so that job steps can still be created
        beside them (the Slurm backend does this for its Python tasks). Everything is
        stopped when the backend closes."""
        import socket
        import subprocess
        import tempfile

        from shoal.backends import slurm

        job = job or os.environ.get("SLURM_JOB_ID")
        if not job:
            raise BackendError("DaskBackend.in_allocation runs inside a Slurm allocation")
        nodes = slurm.allocation(job)
        folder = Path(tempfile.mkdtemp(prefix="shoal-dask-"))
        sfile = folder / "scheduler.json"
        host = host or socket.gethostname()
        procs: list[subprocess.Popen[bytes]] = []
        from shoal.backends.local import _python_path

        env = {**os.environ, "PYTHONPATH": _python_path()}  # the driver's modules import there
        log = open(folder / "dask.log", "wb")  # noqa: SIM115 - the processes write to it
        procs.append(
            subprocess.Popen(
                [
                    python,
                    "-m",
                    "distributed.cli.dask_scheduler",
                    "--host",
                    host,
                    "--port",
                    "0",
                    "--scheduler-file",
                    str(sfile),
                    "--no-dashboard",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        for n in nodes:
            resources = f"cores={len(n.cores)},gpus={len(n.gpus)}"
            procs.append(
                subprocess.Popen(
                    [
                        "srun",
                        f"--jobid={job}",
                        "--overlap" if overlap else "--exact",
                        "-N1",
                        "-n1",
                        f"--cpus-per-task={len(n.cores)}",
                        f"--nodelist={n.name}",
                        f"--job-name=shoal-dask-{n.name}",
                        python,
                        "-m",
                        "distributed.cli.dask_worker",
                        "--scheduler-file",
                        str(sfile),
                        "--name",
                        n.name,
                        "--nthreads",
                        str(len(n.cores)),
                        "--resources",
                        resources,
                        "--no-dashboard",
                        "--local-directory",
                        str(folder / n.name),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        deadline = time.monotonic() + timeout
        while not sfile.exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                for p in procs:
                    p.terminate()
                raise BackendError(f"the Dask scheduler did not start; see {folder / 'dask.log'}")
            time.sleep(0.05)
        try:
            backend = cls(
                scheduler_file=str(sfile),
                wait_for=len(nodes),
                timeout=timeout,
                python=python,
                **options,
            )
        except BaseException:
            for p in procs:
                p.terminate()
            raise BackendError(
                f"the Dask workers did not join the scheduler; see {folder / 'dask.log'}"
            ) from None
        backend._procs = procs
        return backend

    # -- contract ---------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def notes(self) -> list[str]:
        return list(self._notes)

    def start(self, rundir: Path) -> None:
        self.rundir = rundir

    def define(self, function: int, payload: bytes) -> None:
        self.functions[function] = payload

    def submit(self, jobs: Sequence[Job]) -> None:
        from shoal.backends import daskjob

        groups: dict[tuple[Any, ...], list[Job]] = {}
        for job in jobs:
            if job.ranks > 1 or len(job.placement.slots) > 1:
                self.outbox.put(
                    Outcome.unstarted(
                        job.task,
                        job.attempt,
                        time.time(),
                        "error",
                        "the Dask backend runs single-rank tasks on one worker; run MPI "
                        "tasks with the Slurm backend (or locally)",
                    )
                )
                continue
            node = self._nodes[job.placement.slots[0].node].name
            resources = None
            if self.declared:
                resources = {"cores": len(job.placement.cores)}
                if job.placement.gpus:
                    resources["gpus"] = len(job.placement.gpus)
            shape = tuple(sorted((resources or {}).items()))
            own = job.kind == "python" and bool(job.env or job.placement.gpus or job.isolate)
            groups.setdefault((job.kind, own, node, shape), []).append(job)
        for (kind, own, node, res), batch in groups.items():
            keys = [f"shoal-{j.task}-{j.attempt}-{id(j):x}" for j in batch]
            common = {
                "key": keys,
                "workers": [self._named.get(node, node)],
                "allow_other_workers": False,
                "resources": dict(res) or None,
                "pure": False,
                "retries": 0,
            }
            if own:  # a Python task in a process of its own
                futures = self.client.map(
                    daskjob.isolated,
                    keys,
                    [self._function(j.function) for j in batch],
                    [j.payload for j in batch],
                    [self._env(j) for j in batch],
                    [j.folder for j in batch],
                    [self.python] * len(batch),
                    **common,
                )
            elif kind == "python":
                futures = self.client.map(
                    daskjob.python,
                    [self._function(j.function) for j in batch],
                    [j.payload for j in batch],
                    [j.folder for j in batch],
                    [j.task for j in batch],
                    [j.attempt for j in batch],
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
                    **common,
                )
            for job, fut in zip(batch, futures, strict=True):
                ident = (job.task, job.attempt)
                with self.lock:
                    self.futures[ident] = fut
                    self.jobs[ident] = job
                    self.open.add(job.task)
                self.idents[fut.key] = ident
            self.completed.update(futures)  # results come back in batches, in one thread
            self.wakeup.set()

    def cancel(self, task: int, attempt: int) -> None:
        from shoal.backends import daskjob

        ident = (task, attempt)
        with self.lock:
            fut = self.futures.get(ident)
            job = self.jobs.get(ident)
            if fut is None or job is None or ident in self.done:
                return
            self.done.add(ident)
        node = self._nodes[job.placement.slots[0].node].name
        if job.kind == "command" or job.env or job.placement.gpus or job.isolate:
            self._run_on(node, daskjob.stop, fut.key)
        elif fut.status == "pending" and not self._others_on(node, ident):
            # A Python task in a worker thread cannot be interrupted: end the worker process
            # (its nanny starts a new one) when it runs nothing else of this run.
            self._run_on(node, daskjob.exit_worker)
        fut.cancel()
        o = Outcome(task, attempt, False, None, time.time(), "cancelled", "cancelled")
        self._emit(job, o, hold=False)

    def poll(self, timeout: float) -> list[Outcome]:
        self._check_workers()
        out = self._drain()
        if out or timeout <= 0:
            return out
        try:
            first = self.outbox.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self._drain()]

    def close(self) -> None:
        from shoal.backends import daskjob

        self.closing = True
        self.wakeup.set()
        with self.lock:
            futures = list(self.futures.values())
            running = [
                (self._nodes[j.placement.slots[0].node].name, self.futures[i].key)
                for i, j in self.jobs.items()
                if i in self.futures
                and (j.kind == "command" or j.env or j.placement.gpus or j.isolate)
            ]
            self.futures.clear()
        for node, key in running:  # processes on the workers: stop them too
            self._run_on(node, daskjob.stop, key)
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures, force=True)
        if self._own_client:
            with contextlib.suppress(Exception):
                self.client.close()
            self._own_client = False
        for p in reversed(self._procs):  # what in_allocation started
            p.terminate()
        for p in self._procs:
            try:
                p.wait(10)
            except Exception:
                p.kill()
        self._procs = []
        self.collector.join(2)

    # -- helpers ----------------------------------------------------------------------------
    def _drain(self) -> list[Outcome]:
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def _function(self, fid: int) -> Any:
        fut = self._scattered.get(fid)
        if fut is None:
            fut = self._scattered[fid] = self.client.scatter(
                self.functions[fid], broadcast=True, hash=False
            )
        return fut

    def _env(self, job: Job) -> dict[str, str]:
        gpus = ",".join(str(g) for g in job.placement.gpus)
        env = {v: gpus for v in GPU_VARS}
        env["OMP_NUM_THREADS"] = str(job.cpus)
        env.update(job.env)  # the task's own environment wins, as locally
        env.update(attempt_vars(job.task, job.attempt, job.folder))
        return env

    def _run_on(self, node: str, fn: Any, *args: Any) -> None:
        with contextlib.suppress(Exception):  # the worker is gone already: nothing to stop
            self.client.run(fn, *args, workers=[self._address(node)], wait=False)

    def _others_on(self, node: str, ident: tuple[int, int]) -> bool:
        with self.lock:
            return any(
                other != ident
                and other not in self.done
                and self._nodes[j.placement.slots[0].node].name == node
                for other, j in self.jobs.items()
            )

    def _address(self, name: str) -> str:
        for addr, w in self.client.scheduler_info()["workers"].items():
            if str(w.get("name")) == name:
                return str(addr)
        return name

    def _finished(self, ident: tuple[int, int], fut: Any, value: Any) -> None:
        with self.lock:
            self.futures.pop(ident, None)
            job = self.jobs.pop(ident, None)
            if ident in self.done:
                self.done.discard(ident)
                return
        if job is None:
            return
        task, attempt = ident
        node = self._nodes[job.placement.slots[0].node].name
        status = fut.status
        if status == "finished" and not isinstance(value, BaseException):
            try:
                ok, result, kind, error, started, ended, code = value
                o = Outcome(task, attempt, ok, started, ended, kind, error, code, node, result)
            except Exception as err:  # not what daskjob returns
                o = self._lost(task, attempt, f"its result was lost: {err}")
        elif status == "cancelled":
            o = self._lost(task, attempt, "Dask cancelled it")
        else:
            err = value if isinstance(value, BaseException) else fut.exception()
            what = f"{type(err).__name__}: {err}"
            if type(err).__name__ in LOST:
                o = self._lost(task, attempt, f"worker {node} was lost ({what})")
            else:  # the worker could not run it (e.g. cannot import the task's module)
                why = f"Dask worker {node} could not run the task: {what}"
                o = Outcome.unstarted(task, attempt, time.time(), "error", why)
        self._emit(job, o)

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
            if hold and job.after is not None and job.after in self.open:
                self.held.setdefault(job.after, []).append((job, o))
                return
            ready = [(job, o)]
            while ready:
                j, out = ready.pop()
                self.outbox.put(out)
                self.open.discard(j.task)
                ready.extend(self.held.pop(j.task, []))

    @staticmethod
    def _lost(task: int, attempt: int, why: str) -> Outcome:
        return Outcome(task, attempt, False, None, time.time(), "lost", why)

    def _check_workers(self) -> None:
        """Tasks bound to a worker that left, and has not come back in ``grace`` s: lost."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        try:
            names = {str(w.get("name")) for w in self.client.scheduler_info()["workers"].values()}
        except Exception:
            return
        for node in self._nodes:
            if node.name in names:
                self.missing.pop(node.name, None)
            else:
                self.missing.setdefault(node.name, now)
        gone = {n for n, since in self.missing.items() if now - since > self.grace}
        if not gone:
            return
        with self.lock:
            stranded = [
                (ident, fut, self.jobs[ident])
                for ident, fut in self.futures.items()
                if self._nodes[self.jobs[ident].placement.slots[0].node].name in gone
                and ident not in self.done
            ]
            for ident, _, _ in stranded:
                self.done.add(ident)
        for (task, attempt), fut, job in stranded:
            fut.cancel()
            self._emit(job, self._lost(task, attempt, "its Dask worker left and did not return"))
