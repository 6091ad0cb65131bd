"""Building a backend's :class:`~shoal.backends.base.Job` from a core ``Dispatch``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from shoal.backends.base import Job
from shoal.core.commands import Dispatch
from shoal.core.events import Outcome
from shoal.errors import DefinitionError
from shoal.runtime.outputs import OutputCache
from shoal.runtime.work import Work, isolated
from shoal.spec.kinds import Failure
from shoal.spec.task import TASK_DIR, render_command
from shoal.store.pickles import loads


class Jobs:
    """Turns dispatches into jobs: the task's arguments, outputs resolved as needed."""

    def __init__(
        self,
        work: Work,
        outputs: OutputCache,
        tasks_root: str,
        clock: Callable[[], float],
        log: logging.Logger,
    ) -> None:
        self.work = work
        self.outputs = outputs
        self.tasks_root = tasks_root
        self.clock = clock
        self.log = log

    def job(self, d: Dispatch) -> Job | Outcome:
        """The job of ``d``, or the failure of the task if its inputs cannot be prepared."""
        r = self.work.records[d.task]
        k = r.kind_of  # read once, not through Record's properties
        o = k.options
        job = Job(
            task=r.id,
            attempt=d.attempt,
            name=r.name,
            kind=k.kind,
            placement=d.placement,
            folder=f"{self.tasks_root}/{r.id}",
            function=k.function,
            workdir=k.workdir,
            env=k.env or {},
            ranks=o.ranks,
            cpus=o.cpus,
            after=d.after,
            isolate=isolated(r),
        )
        try:
            if k.kind == "python":
                if d.follows:
                    job.payload = self.outputs.payload(r, local=d.after)
                    job.follows = True
                elif r.has_refs:
                    job.payload = self.outputs.payload(r)
                else:
                    job.payload = r.payload
            else:
                assert r.template is not None
                if r.workdir is not None and r.workdir.startswith(TASK_DIR):
                    job.workdir = job.folder + r.workdir[len(TASK_DIR) :]
                    os.makedirs(job.workdir, exist_ok=True)
                if r.has_refs:
                    values = self.outputs.resolve(r)[1]
                else:
                    values = loads(r.payload, f"the arguments of {r.name!r} (#{r.id})")[1]
                job.argv, job.shell = render_command(r.template, values)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # the task's own data: fail the task
            # Unpickling an argument or an output runs the user's code and imports their
            # modules: whatever it raises (SystemExit included) fails this task and what
            # depends on it, never the run (a resume would crash at the same place).
            text = str(err) if isinstance(err, DefinitionError) else f"{type(err).__name__}: {err}"
            msg = f"cannot prepare the inputs: {text}"
            self.log.warning("task %s (%s): %s", r.id, r.name, msg)
            now = self.clock()
            return Outcome(r.id, d.attempt, False, now, now, Failure.ERROR, msg)
        return job
