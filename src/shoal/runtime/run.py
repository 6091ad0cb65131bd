"""The user's handle on a run: results, status and failures, read from the store."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoal.errors import (
    DependencyFailed,
    RunInterrupted,
    ShoalError,
    StoreError,
    TaskFailed,
    TaskSkipped,
)
from shoal.spec.task import Task
from shoal.store.lock import held
from shoal.store.queries import Reader


class Run:
    """A run, live or finished. Everything it says comes from ``shoal.db`` in ``run.dir``."""

    def __init__(
        self,
        rundir: Path,
        name: str,
        thread: threading.Thread | None = None,
        ids: Mapping[int, int] | None = None,
    ) -> None:
        self.dir = Path(rundir)
        self.name = name
        self._ids = (
            ids if ids is not None else {}
        )  # task handle key -> id in this run (a handle may join other runs)
        self._thread = thread
        self.error: BaseException | None = None  # set when the driver itself crashed
        self.state = "running" if thread else "unknown"

    def __repr__(self) -> str:
        return f"<Run {self.name!r} {self.state} at {self.dir}>"

    # -- waiting --------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (or ``timeout`` seconds pass); re-raise a driver crash."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self

    @property
    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    @property
    def ok(self) -> bool:
        """True when the run finished and no task failed: every task succeeded (or was
        skipped), or the run was stopped on purpose (a Response, a rule) with nothing failed."""
        return self.state in ("succeeded", "stopped")

    # -- questions ------------------------------------------------------------------------
    def _id(self, reader: Reader, task: Task | int | str) -> int:
        if isinstance(task, Task):
            tid = self._ids.get(task.key)
            if tid is None:
                raise StoreError(f"task {task.name!r} is not part of run {self.name!r}")
            return tid
        return reader.find(task).id

    def result(self, task: Task | int | str) -> Any:
        """The return value of a task (for commands: returncode, stdout and dir).

        Raises :class:`TaskFailed` (with the remote traceback) if it failed, and
        :class:`DependencyFailed` naming the root task if it never ran because of a failure.
        """
        with Reader(self.dir) as r:
            tid = self._id(r, task)
            row = r.find(tid)
            seen = {tid}
            while row.state == "succeeded" and row.alias is not None and row.alias not in seen:
                tid = row.alias  # replaced (Response replace=): its stand-in's output
                seen.add(tid)
                row = r.find(tid)
            if row.state == "succeeded":
                return r.result(tid)
            if row.state == "skipped":
                raise TaskSkipped(
                    f"task {row.name!r} (#{tid}) did not run: {row.reason}",
                    task=tid,
                    name=row.name,
                )
            if row.state == "failed":
                raise self._failure(r, tid)
            if row.state == "dep_failed":
                root = self._root(r, tid)
                rrow = r.find(root)
                raise DependencyFailed(
                    f"task {row.name!r} (#{tid}) did not run because task {rrow.name!r} "
                    f"(#{root}) failed: {rrow.reason}",
                    task=tid,
                    name=row.name,
                    kind="dependency",
                    root=root,
                    root_name=rrow.name,
                )
            if row.state == "cancelled":
                raise TaskFailed(
                    f"task {row.name!r} (#{tid}) was cancelled: {row.reason}",
                    task=tid,
                    name=row.name,
                    kind="cancelled",
                )
            raise self._unfinished(r, tid, row.name, row.state)

    def _unfinished(self, r: Reader, tid: int, name: str, state: str) -> ShoalError:
        """Why a task that has not finished has no result: the run still goes on, was
        interrupted (resumable: exit code 3), or ended before it ran."""
        meta = r.meta()
        run_state = meta.get("state") or self.state
        what = f"task {name!r} (#{tid}) has no result yet: it is {state}"
        if run_state == "interrupted":
            why = meta.get("stop_reason") or "a signal or its deadline"
            return RunInterrupted(
                f"{what}, because run {self.name!r} was interrupted ({why}) before it "
                f"finished. Carry it on with: shoal resume {self.dir}",
                task=tid,
                name=name,
                rundir=str(self.dir),
            )
        if run_state == "running" and (not self.done or held(self.dir)):
            return StoreError(f"{what}; the run goes on: call run.wait() first")
        if run_state == "running":
            return StoreError(
                f"{what}; the run is recorded as running, but no driver here runs it: if its "
                f"driver died, carry it on with: shoal resume {self.dir}"
            )
        return StoreError(
            f"{what}; run {self.name!r} ended {run_state} before it ran"
            + (f" ({meta['stop_reason']})" if meta.get("stop_reason") else "")
            + f". Run the rest with: shoal resume {self.dir}"
        )

    def _failure(self, r: Reader, tid: int) -> TaskFailed:
        row = r.find(tid)
        attempts = r.attempts(tid)
        last = attempts[-1] if attempts else {}
        folder = self.dir / "tasks" / str(tid)
        logs = f"Output and traceback: {folder}" if folder.exists() else "It printed nothing."
        error = last.get("error") or ""
        # Python errors carry the remote traceback; commands the tail of their stderr.
        tb = error.split("\n", 1)[1] if "\n" in error else ""
        return TaskFailed(
            f"task {row.name!r} (#{tid}) failed: {row.reason}. {logs}",
            task=tid,
            name=row.name,
            kind=last.get("kind") or "error",
            traceback=tb,
            exit_code=last.get("exit_code"),
        )

    def _root(self, r: Reader, tid: int) -> int:
        """The failed task upstream of a dependency-failed one (breadth first, nearest)."""
        todo: deque[int] = deque(r.find(tid).deps)
        seen: set[int] = set()
        while todo:
            t = todo.popleft()
            if t in seen:
                continue
            seen.add(t)
            row = r.find(t)
            if row.state in ("failed", "cancelled"):
                return t
            todo.extend(row.deps)
        return -1

    def status(self) -> dict[str, Any]:
        """Counts of tasks by state, and the run's state."""
        with Reader(self.dir) as r:
            counts = r.counts()
            meta = r.meta()
        return {
            "run": self.name,
            "state": meta.get("state", self.state),
            "counts": counts,
            "total": sum(counts.values()),
        }

    def memory(self, rule: str) -> dict[str, Any]:
        """The stored ``ctl.memory`` of a rule or strategy (by its label)."""
        with Reader(self.dir) as r:
            return r.memory(rule)

    def stats(self, tag: str = "*") -> dict[str, Any]:
        """A tag's counts and statistics (runtime, wait, tracked fields), as last written to
        ``status.json``; ``"*"``: all tasks (when kept)."""
        import json

        path = self.dir / "status.json"
        try:
            groups = json.loads(path.read_text()).get("groups", {})
        except (OSError, ValueError) as err:
            raise StoreError(f"cannot read {path}: {err}") from None
        if tag not in groups:
            known = ", ".join(sorted(groups)) or "none"
            raise StoreError(f"run {self.name!r} has no statistics for {tag!r} (groups: {known})")
        out: dict[str, Any] = groups[tag]
        return out

    def failures(self) -> list[dict[str, Any]]:
        """Failed tasks: id, name, reason, kind, exit code and the folder with their logs."""
        with Reader(self.dir) as r:
            return r.failures()
