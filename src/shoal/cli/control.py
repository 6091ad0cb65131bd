"""Commands that change a run: resume, retry, rerun, cancel, submit (and the --time-left rule).

A live run takes ``retry``, ``rerun``, ``cancel`` and ``submit`` within a second (they go
through its store, see :mod:`shoal.runtime.requests`); a stopped run keeps them for
``shoal resume``, which carries them out first.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

import click

from shoal.store.selection import (
    check_cancel,
    check_retry,
    chosen_to_rerun,
    task_ref,
)

EXIT_INPUT = 2  # a request refused (no such task, one that cannot be retried, ...)
EXIT_STOPPED = 3  # the run stopped early (a signal, the deadline) and can be resumed


def allocation_end() -> float | None:
    """When the allocation ends (epoch seconds): Slurm's SLURM_JOB_END_TIME, or SHOAL_END_TIME
    for any other batch system; None when neither is set."""
    for var in ("SHOAL_END_TIME", "SLURM_JOB_END_TIME"):
        value = os.environ.get(var)
        if value:
            try:
                return float(value)
            except ValueError:
                raise click.UsageError(f"{var}={value!r} is not a time in epoch seconds") from None
    job = os.environ.get("SLURM_JOB_ID")
    if job:  # Slurm before 23.02 does not export the end time: ask it
        from shoal.backends.slurm import end_time

        return end_time(job)
    return None


def deadline(time_left: float | None) -> float | None:
    """``--time-left MINUTES``: stop starting tasks that many minutes before the end."""
    if time_left is None:
        return None
    end = allocation_end()
    if end is None:
        raise click.UsageError(
            "--time-left needs the allocation's end: run inside a Slurm job (SLURM_JOB_END_TIME)"
            " or set SHOAL_END_TIME to the end in epoch seconds"
        )
    return end - time_left * 60


def _report(request: int, answer: str | None, live: bool, rundir: Path) -> None:
    """Print the driver's answer, or that the request waits; a refusal exits 2."""
    if answer is not None:
        if answer.startswith(("refused", "0 task(s)")):
            click.secho(f"shoal: request {request}: {answer}", fg="red", err=True)
            sys.exit(EXIT_INPUT)
        click.echo(f"request {request}: {answer}")
    elif live:
        click.echo(f"request {request} is queued; the driver has not answered yet")
    else:
        click.echo(
            f"request {request} is queued; no driver runs {rundir}: it is carried out when the "
            f"run resumes (shoal resume {rundir})"
        )


def _answer(a: Any, request: int, wait: float, rundir: Path) -> None:
    """Wait up to ``wait`` seconds for a live driver's answer (not at all for a stopped run),
    and report it."""
    _report(request, a.answer(request, wait if a.live else 0), a.live, rundir)


def register(main: click.Group, rundir_of: Any) -> None:
    """Add the commands to the ``shoal`` group (``rundir_of`` finds a run directory)."""
    _add_resume(main)
    _add_retry(main, rundir_of)
    _add_rerun(main, rundir_of)
    _add_cancel(main, rundir_of)
    _add_submit(main, rundir_of)
    _add_stop(main, rundir_of)


def _add_resume(main: click.Group) -> None:
    """``shoal resume RUN_DIR``."""

    @main.command()
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option("--time-left", type=float, help="Stop starting tasks MINUTES before the end.")
    @click.option(
        "--stop-mode",
        type=click.Choice(["cancel", "finish"]),
        help="On a stop: stop the running tasks (cancel) or let them finish.",
    )
    @click.option("--cpus", type=int, help="Pretend a node of this many cores.")
    @click.option("--gpus", type=int, help="Pretend a node with this many GPUs.")
    def resume(
        run_dir: str,
        time_left: float | None,
        stop_mode: str | None,
        cpus: int | None,
        gpus: int | None,
    ) -> None:
        """Go on with a run whose driver died or was stopped. Succeeded tasks do not run
        again; tasks that were running get a new attempt. Exits 0 when every task succeeded,
        1 if some failed, 3 if it was stopped again before the end."""
        from shoal.runtime.api import resume
        from shoal.runtime.options import defaults

        options: dict[str, Any] = {}
        for key, value in (("stop_mode", stop_mode), ("cpus", cpus), ("gpus", gpus)):
            if value is not None:
                options[key] = value
        with defaults(cli=True, stop_at=deadline(time_left)):
            run = resume(run_dir, **options)
        if run.state == "interrupted":
            sys.exit(EXIT_STOPPED)
        if not run.ok:
            sys.exit(1)


def _add_retry(main: click.Group, rundir_of: Any) -> None:
    """``shoal retry TASKS``."""

    @main.command()
    @click.argument("run_dir")
    @click.argument("tasks", nargs=-1)
    @click.option("--failed", is_flag=True, help="Every failed task.")
    @click.option("--tag", help="The failed or cancelled tasks of this tag.")
    @click.option("--timeout", type=float, help="A new timeout (seconds) for the retries.")
    @click.option("--memory", help="A new memory request (MB, or like 4GB).")
    @click.option("--wait", type=float, default=5.0, help="Seconds to wait for the answer.")
    def retry(
        run_dir: str,
        tasks: tuple[str, ...],
        failed: bool,
        tag: str | None,
        timeout: float | None,
        memory: str | None,
        wait: float,
    ) -> None:
        """Run failed or cancelled tasks again (TASKS: ids or names); what failed because of
        them runs again too."""
        from shoal.runtime.requests import attach

        d = rundir_of(run_dir)
        if not (tasks or failed or tag):
            raise click.UsageError("name tasks, or give --failed or --tag T")
        changes: dict[str, Any] = {}
        if timeout is not None:
            changes["timeout"] = timeout
        if memory is not None:
            changes["memory"] = memory
        check_retry(d, tasks, failed, tag)
        a = attach(d)
        rid = a.retry(*[task_ref(t) for t in tasks], failed=failed, tag=tag, **changes)
        _answer(a, rid, wait, d)


def _add_rerun(main: click.Group, rundir_of: Any) -> None:
    """``shoal rerun TASK``."""

    @main.command()
    @click.argument("tasks", nargs=-1)
    @click.option(
        "--run", "-r", "run_dir", help="The run directory (default: the newest one here)."
    )
    @click.option("--tag", help="Every finished task of this tag.")
    @click.option(
        "--state", "states", multiple=True, help="Every task in these finished states (failed)."
    )
    @click.option("--downstream", is_flag=True, help="Also run what depends on them again.")
    @click.option("--wait", type=float, default=5.0, help="Seconds to wait for the answer.")
    def rerun(
        tasks: tuple[str, ...],
        run_dir: str | None,
        tag: str | None,
        states: tuple[str, ...],
        downstream: bool,
        wait: float,
    ) -> None:
        """Run finished tasks again (TASKS: ids or names, or every finished task of --tag
        and --state), and with --downstream their dependents."""
        from shoal.runtime.requests import attach

        d = rundir_of(run_dir)
        chosen = chosen_to_rerun(d, tasks, tag, states)
        a = attach(d)
        rid = a.rerun(*chosen, downstream=downstream)
        _answer(a, rid, wait, d)


def _add_cancel(main: click.Group, rundir_of: Any) -> None:
    """``shoal cancel TASKS``."""

    @main.command()
    @click.argument("tasks", nargs=-1)
    @click.option(
        "--run", "-r", "run_dir", help="The run directory (default: the newest one here)."
    )
    @click.option("--tag", help="Every unfinished task of this tag.")
    @click.option("--wait", type=float, default=5.0, help="Seconds to wait for the answer.")
    def cancel(tasks: tuple[str, ...], run_dir: str | None, tag: str | None, wait: float) -> None:
        """Cancel tasks (ids or names) or a tag: running ones are stopped, and what depends on
        them ends as cancelled."""
        from shoal.runtime.requests import attach

        if not (tasks or tag):
            raise click.UsageError("name tasks, or give --tag T")
        d = rundir_of(run_dir)
        check_cancel(d, tasks, tag)
        a = attach(d)
        rid = a.cancel(*[task_ref(t) for t in tasks], tag=tag)
        _answer(a, rid, wait, d)


def _add_stop(main: click.Group, rundir_of: Any) -> None:
    """``shoal stop``."""

    @main.command()
    @click.option(
        "--run", "-r", "run_dir", help="The run directory (default: the newest one here)."
    )
    @click.option(
        "--now",
        is_flag=True,
        help="Cancel the running tasks too (default: let them finish, start nothing new).",
    )
    @click.option("--wait", type=float, default=5.0, help="Seconds to wait for the answer.")
    def stop(run_dir: str | None, now: bool, wait: float) -> None:
        """Stop a live run: nothing new starts; running tasks finish (or, --now, are
        cancelled). The run ends as stopped and can be resumed (shoal resume RUN_DIR)."""
        from shoal.runtime.requests import attach

        d = rundir_of(run_dir)
        a = attach(d)
        if not a.live:
            raise click.UsageError(f"no driver runs {d}: there is nothing to stop")
        _answer(a, a.stop(drain=not now), wait, d)


def _add_submit(main: click.Group, rundir_of: Any) -> None:
    """``shoal submit RUN_DIR SCRIPT``."""

    @main.command()
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.argument("script", type=click.Path(exists=True, dir_okay=False))
    @click.option("--wait", type=float, default=5.0, help="Seconds to wait for the answer.")
    def submit(run_dir: str, script: str, wait: float) -> None:
        """Add the workflows SCRIPT defines to a run (live or stopped). SCRIPT builds
        workflows without running them; shoal.attach(os.environ['SHOAL_RUN_DIR']).ref(id)
        refers to outputs of the run's tasks."""
        from shoal.runtime.requests import attach
        from shoal.spec.workflow import Workflow

        d = rundir_of(run_dir)
        os.environ["SHOAL_RUN_DIR"] = str(d)
        sys.path.insert(0, str(Path(script).resolve().parent))
        found = runpy.run_path(script, run_name="__shoal_submit__")
        flows = [v for v in found.values() if isinstance(v, Workflow)]
        if not flows:
            raise click.UsageError(f"{script} defines no shoal.Workflow to submit")
        from shoal.runtime.requests import check_submit

        check_submit(d, flows)
        a = attach(d)
        rid = a.submit(*flows)
        _answer(a, rid, wait, d)
