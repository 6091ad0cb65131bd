"""The Flux backend: tasks as Flux jobs of the instance the driver runs in (``FLUX_URI``).

A thin adapter over the Flux Python bindings (``import flux``; they come with flux-core, not
from PyPI). The pure parts are here and unit-tested: :func:`jobspec` builds a version-1
jobspec (ranks as slots of ``cpus`` cores and ``gpus`` GPUs, placed on the nodes the
placement names through a ``hostlist`` constraint) and :func:`outcome` turns a job's event
log (``start``, ``finish``, ``exception``) into an :class:`~shoal.core.events.Outcome`.
:class:`FluxBackend` submits through ``flux.job.FluxExecutor`` and follows each job's
events. Python tasks run as ``python -m shoal.backends.isolated`` jobs.

**Experimental.** Flux cannot be installed on this project's test machines (flux-core is not
packaged for its Debian), so the backend class has never run against a Flux broker; only its
pure helpers are tested. It says so with a warning whenever it is made, and it should be used
only when asked for by name (``backend="flux"`` or ``SHOAL_BACKEND=flux``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.backends.base import Backend, Job, job_command
from shoal.backends.env import gpu_vars
from shoal.backends.execute import attempt_vars
from shoal.backends.processes import python_reply
from shoal.core.events import Outcome
from shoal.core.resources import Node
from shoal.errors import BackendError
from shoal.spec.kinds import Failure


def jobspec(
    job: Job, command: list[str], hosts: Sequence[str], env: dict[str, str], timeout: float = 0
) -> dict[str, Any]:
    """A Flux jobspec (version 1, as a dict) for ``job`` running ``command``."""
    p = job.placement
    ranks = sum(s.ranks for s in p.slots)
    gpus = len(p.gpus) // ranks if ranks else 0
    slot: list[dict[str, Any]] = [{"type": "core", "count": job.cpus}]
    if gpus:
        slot.append({"type": "gpu", "count": gpus})
    per_node = ranks
    if len(p.slots) > 1:
        per_node = ranks // len(p.slots)
        if per_node * len(p.slots) != ranks:
            raise BackendError(
                f"task {job.task}: Flux places the same number of ranks on each node, but its "
                f"placement has {[s.ranks for s in p.slots]} ranks per node"
            )
    resources: list[dict[str, Any]] = [
        {"type": "slot", "count": per_node, "label": "task", "with": slot}
    ]
    if len(p.slots) > 1:
        resources = [{"type": "node", "count": len(p.slots), "with": resources}]
    names = [hosts[s.node] for s in p.slots]
    system: dict[str, Any] = {
        "duration": float(timeout or 0),
        "cwd": job.workdir or os.getcwd(),
        "environment": env,
        "constraints": {"hostlist": names},
        "shell": {
            "options": {
                "output": {
                    "stdout": {"type": "file", "path": str(Path(job.folder) / "stdout")},
                    "stderr": {"type": "file", "path": str(Path(job.folder) / "stderr")},
                }
            }
        },
        "job": {"name": f"shoal-{job.task}"},
    }
    return {
        "version": 1,
        "resources": resources,
        "tasks": [{"command": list(command), "slot": "task", "count": {"per_slot": 1}}],
        "attributes": {"system": system},
    }


# Flux's exception types that end a job, as failure kinds (any other: the job was lost)
_EXCEPTIONS = {"cancel": Failure.CANCELLED, "timeout": Failure.TIMEOUT}


def outcome(
    task: int, attempt: int, events: Sequence[tuple[str, float, dict[str, Any]]]
) -> Outcome | None:
    """The outcome of a job from its events ``(name, timestamp, context)``; None while it
    has not ended. A job that ends has a ``finish`` event (its wait status) or an
    ``exception`` of severity 0 (cancelled, timed out, its node lost)."""
    started = None
    for name, ts, ctx in events:
        if name == "start":
            started = ts
        elif name == "exception" and int(ctx.get("severity", 0)) == 0:
            kind = _EXCEPTIONS.get(ctx.get("type", ""), Failure.LOST)
            note = ctx.get("note") or ctx.get("type") or "a Flux job exception"
            if kind == Failure.TIMEOUT or kind == Failure.CANCELLED:
                return Outcome(task, attempt, False, started, ts, kind, str(note))
            return Outcome(task, attempt, False, started, ts, kind, f"Flux: {note}")
        elif name == "finish":
            status = int(ctx.get("status", 0))
            if status == 0:
                return Outcome(task, attempt, True, started, ts, "", "", 0, "flux")
            if status & 0x7F:
                sig = status & 0x7F
                return Outcome(
                    task,
                    attempt,
                    False,
                    started,
                    ts,
                    Failure.CRASH,
                    f"the job was killed by signal {sig}",
                    -sig,
                )
            code = status >> 8
            return Outcome(
                task,
                attempt,
                False,
                started,
                ts,
                Failure.EXIT,
                f"the job exited with code {code}",
                code,
            )
    return None


def resource_set(rset: Any) -> dict[str, Any]:
    """The R document of a ``flux.resource`` set (its ``encode()`` is a JSON string)."""
    import json

    text = rset.all.encode() if hasattr(rset, "all") else rset
    data = json.loads(text) if isinstance(text, str | bytes) else text
    if not isinstance(data, dict):
        raise BackendError(f"cannot read the Flux resource set: {str(text)[:200]}")
    return data


def finish(job: Job, o: Outcome) -> Outcome:
    """Add what the job left in its folder: a Python task's reply, a command's output."""
    if job.kind == "python" and o.kind in ("", Failure.EXIT):
        return python_reply(job, o.exit_code or 0, o.started or 0.0, o.ended or 0.0)
    if o.ok:
        stdout = Path(job.folder) / "stdout"
        text = stdout.read_bytes()[: 1 << 20].decode(errors="replace") if stdout.exists() else ""
        value = {"returncode": 0, "stdout": text, "dir": job.folder}
        return Outcome(
            o.task,
            o.attempt,
            True,
            o.started,
            o.ended,
            "",
            "",
            0,
            "flux",
            pickle.dumps(value, protocol=5),
        )
    return o


def nodes_of(resources: dict[str, Any]) -> list[Node]:
    """Nodes from a Flux ``R`` (resource set) document: ``execution.R_lite`` entries name
    ranks with their ``core`` and ``gpu`` id lists; ``execution.nodelist`` names the ranks."""
    execution = resources.get("execution", {})
    hosts = _expand(execution.get("nodelist", []))
    out = []
    for entry in execution.get("R_lite", []):
        children = entry.get("children", {})
        cores = _ids(children.get("core", ""))
        gpus = _ids(children.get("gpu", ""))
        for rank in _ids(entry.get("rank", "")):
            name = hosts[rank] if rank < len(hosts) else f"rank{rank}"
            out.append(Node(name, cores, gpus))
    return out


def _ids(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in str(text).split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


def _expand(nodelist: Sequence[str]) -> list[str]:
    """``["node[1-2,4]", "gpu7"]`` -> ["node1", "node2", "node4", "gpu7"]."""
    out: list[str] = []
    for item in nodelist:
        head, sep, rest = item.partition("[")
        if not sep:
            out.append(item)
            continue
        body, _, tail = rest.partition("]")
        for part in body.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{head}{i:0{width}d}{tail}")
    return out


EXPERIMENTAL = (
    "the Flux backend is experimental: it has never run against a Flux broker in shoal's "
    "tests (only its jobspec and event-log helpers are tested); check the first runs' "
    "outcomes, and report what goes wrong"
)


class FluxExperimental(UserWarning):
    """The Flux backend has not been tested against a real Flux instance."""


class FluxBackend(Backend):
    """Tasks as jobs of the enclosing Flux instance (needs the Flux Python bindings).
    Experimental: see the module's docstring; it warns (``FluxExperimental``) when made."""

    name = "flux"
    capabilities = frozenset({"python", "command", "mpi", "cancel"})
    prefetch = 0

    def __init__(self, python: str = sys.executable) -> None:
        import warnings

        warnings.warn(EXPERIMENTAL, FluxExperimental, stacklevel=2)
        try:
            import flux
            import flux.job
            import flux.resource
        except ImportError as err:
            raise BackendError(
                "the Flux backend needs the Flux Python bindings, which come with flux-core "
                f"({err}); run the driver inside a Flux instance (flux alloc / flux batch)"
            ) from None
        self._flux = flux
        self.handle = flux.Flux()
        rset = flux.resource.resource_list(self.handle).get()
        self._nodes = nodes_of(resource_set(rset))
        if not self._nodes:
            raise BackendError("the Flux instance reports no resources")
        self.hosts = [n.name for n in self._nodes]
        self.python = python
        self.functions: dict[int, bytes] = {}
        self.executor = flux.job.FluxExecutor()
        self.futures: dict[tuple[int, int], Any] = {}
        self.events: dict[tuple[int, int], list[tuple[str, float, dict[str, Any]]]] = {}
        self.outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.jobs: dict[tuple[int, int], Job] = {}

    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def start(self, rundir: Path) -> None:
        self.rundir = rundir

    def define(self, function: int, payload: bytes) -> None:
        self.functions[function] = payload

    def submit(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            command = job_command(job, self.functions, self.python)
            env = {**os.environ, **job.env, **gpu_vars(job.placement.gpus)}
            env.update(attempt_vars(job.task, job.attempt, job.folder))
            Path(job.folder).mkdir(parents=True, exist_ok=True)
            spec = self._flux.job.JobspecV1(**jobspec(job, command, self.hosts, env))
            ident = (job.task, job.attempt)
            self.events[ident] = []
            self.jobs[ident] = job
            fut = self.executor.submit(spec)
            self.futures[ident] = fut
            for name in ("start", "finish", "exception"):
                fut.add_event_callback(name, lambda f, ev, ident=ident: self._event(ident, ev))

    def cancel(self, task: int, attempt: int) -> None:
        fut = self.futures.get((task, attempt))
        if fut is not None:
            self._flux.job.cancel(self.handle, fut.jobid())

    def poll(self, timeout: float) -> list[Outcome]:
        out: list[Outcome] = []
        try:
            out.append(self.outbox.get(timeout=max(timeout, 0)))
        except queue.Empty:
            return out
        while not self.outbox.empty():
            out.append(self.outbox.get())
        return out

    def close(self) -> None:
        for ident, fut in list(self.futures.items()):
            with contextlib.suppress(Exception):  # it ended already
                self._flux.job.cancel(self.handle, fut.jobid())
            self.futures.pop(ident, None)
        self.executor.shutdown(wait=False)

    def _event(self, ident: tuple[int, int], ev: Any) -> None:
        if ident not in self.events:  # it ended already (an exception, then its finish)
            return
        self.events[ident].append((ev.name, float(ev.timestamp), dict(ev.context)))
        o = outcome(*ident, self.events[ident])
        if o is None:
            return
        self.futures.pop(ident, None)
        del self.events[ident]
        job = self.jobs.pop(ident)
        self.outbox.put(finish(job, o))
