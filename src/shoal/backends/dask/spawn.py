"""Persistent Dask workers that shoal starts itself inside an allocation: a Dask scheduler
here and one worker per host, each started by the allocation's own launcher (Slurm's
``srun``, Grid Engine's ``qrsh -inherit``, PBS's ``pbsdsh``), holding the host's cores.
Python tasks then start in microseconds instead of paying an interpreter per task.

The scheduler and the workers listen on loopback when the allocation is this one host,
else on the hosts' own addresses, never on every interface, and speak TLS with a key made
for this run: nobody without it can connect. A worker that ends is started again, up to
REVIVALS times per host; everything stops when the backend closes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from shoal.backends.dask.backend import DaskBackend, security
from shoal.backends.env import python_path
from shoal.errors import BackendError

REVIVALS = 5  # times a worker is started again after it ended

# How the allocation starts a command on one of its hosts: (host, cores, gpus) -> the
# launcher's words, before the command
Launcher = Callable[[str, int, int], list[str]]


class WorkerSteps:
    """The scheduler and the worker steps started for one Dask backend (its ``spawned``): a
    worker step that ends is started again, up to REVIVALS times per node; all of them stop
    when the backend closes."""

    def __init__(self, log: Path, temporary: Path | None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []  # the scheduler, then a step per node
        # node name -> the worker step's argv, log and environment, to start it again
        self.spawn: dict[str, tuple[list[str], IO[bytes], dict[str, str]]] = {}
        self.revived: dict[str, int] = {}
        self.log = log  # the scheduler's and the workers' log
        self.temporary = temporary  # a folder of their own, removed when they stop

    def start(self, argv: list[str], out: IO[bytes], env: dict[str, str], node: str = "") -> None:
        """Start the scheduler (no ``node``) or the worker step of ``node``."""
        if node:
            self.spawn[node] = (argv, out, env)
        self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env))

    def revive(self, say: Callable[[str], None]) -> None:
        """Start again a worker step that ended (the step was lost), so that the tasks of its
        node have a worker again."""
        for i, (name, (argv, log, env)) in enumerate(list(self.spawn.items()), start=1):
            p = self.procs[i]
            if p.poll() is None:
                continue
            n = self.revived.get(name, 0)
            if n >= REVIVALS:
                continue
            self.revived[name] = n + 1
            say(
                f"the Dask worker step on {name} ended (exit {p.returncode}); shoal started it "
                f"again (see {self.log})"
            )
            self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        """Stop the workers, then the scheduler; remove a folder of their own."""
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except Exception:
                p.kill()
        self.procs = []
        self.spawn = {}
        self._tidy()

    def abandon(self) -> None:
        """They did not come up: stop them without waiting."""
        for p in self.procs:
            p.terminate()
        self._tidy()

    def _tidy(self) -> None:
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)
            self.temporary = None


def start_cluster(
    hosts: Sequence[tuple[str, int, int]],
    launcher: Launcher,
    *,
    host: str | None = None,
    python: str = sys.executable,
    timeout: float = 120.0,
    folder: Path | None = None,
    **options: Any,
) -> DaskBackend:
    """A Dask backend on a worker per host of ``hosts`` ((name, cores, gpus)), each started
    by ``launcher``; the scheduler binds ``host`` (default: loopback when the only host is
    this one, else this host's address). Their log, the scheduler file and the TLS key are in
    ``folder`` (a temporary folder, removed on close, when none is given); ``options`` go to
    ``DaskBackend``."""
    temporary = folder is None
    folder = Path(tempfile.mkdtemp(prefix="shoal-dask-")) if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    sfile = folder / "scheduler.json"
    sfile.unlink(missing_ok=True)
    single = len(hosts) == 1 and hosts[0][0] in (socket.gethostname(), "localhost")
    if host is None:
        host = "127.0.0.1" if single else socket.gethostbyname(socket.gethostname())
    sec, tls = security(folder / "tls")
    steps = WorkerSteps(folder / "dask.log", folder if temporary else None)
    env = {**os.environ, "PYTHONPATH": python_path()}  # the driver's modules import there
    log = open(folder / "dask.log", "ab")  # noqa: SIM115 - the processes write to it
    steps.start(scheduler_argv(python, host, tls, sfile), log, env)
    for name, cores, gpus in hosts:
        # the worker binds to this address on its host: loopback on a single host, else
        # the host's own name (resolved there), never every interface
        where = "127.0.0.1" if single else name
        argv = [
            *launcher(name, cores, gpus),
            *worker_argv(python, sfile, where, tls, name, cores, gpus),
        ]
        steps.start(argv, log, env, node=name)
    deadline = time.monotonic() + timeout
    while not sfile.exists():
        if time.monotonic() > deadline or steps.procs[0].poll() is not None:
            steps.abandon()
            raise BackendError(f"the Dask scheduler did not start; see {folder / 'dask.log'}")
        time.sleep(0.05)
    try:
        backend = DaskBackend(
            scheduler_file=str(sfile),
            wait_for=len(hosts),
            timeout=timeout,
            python=python,
            security=sec,
            **options,
        )
    except BaseException:
        steps.abandon()
        raise BackendError(
            f"the Dask workers did not join the scheduler; see {folder / 'dask.log'}"
        ) from None
    backend.spawned = steps
    return backend


def worker_argv(
    python: str, sfile: Path, host: str, tls: Sequence[str], name: str, cores: int, gpus: int
) -> list[str]:
    """One persistent Dask worker holding ``cores`` and ``gpus``, bound to ``host``."""
    return [
        python,
        "-m",
        "distributed.cli.dask_worker",
        "--scheduler-file",
        str(sfile),
        "--host",
        host,
        "--protocol",
        "tls",
        *tls,
        "--name",
        name,
        "--nthreads",
        str(cores),
        "--resources",
        f"cores={cores},gpus={gpus}",
        "--no-dashboard",
    ]


def scheduler_argv(python: str, host: str, tls: list[str], sfile: Path) -> list[str]:
    """The Dask scheduler's command line: TLS only, on ``host``, no dashboard."""
    return [
        python,
        "-m",
        "distributed.cli.dask_scheduler",
        "--host",
        host,
        "--port",
        "0",
        "--protocol",
        "tls",
        *tls,
        "--scheduler-file",
        str(sfile),
        "--no-dashboard",
    ]
