"""The ``shoal`` command: run workflows, and ask a run directory what ran, what failed and why.

Exit codes: 0 success; 1 the run finished with failed tasks; 2 bad input (the workflow, the
options or the run directory); 3 the run was stopped before the end by a signal or its
deadline, and can be resumed (``shoal resume RUN_DIR``); 130 stopped at once (a second Ctrl-C).
"""

from __future__ import annotations

import errno
import json
import runpy
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from shoal.errors import RunInterrupted, ShoalError, StoreError, TaskFailed
from shoal.store.queries import Reader

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130
NO_LOGS = "none (it printed nothing)"


def latest_run(where: Path) -> Path:
    """``where`` itself if it is a run directory, else the newest run directory inside it."""
    if (where / "shoal.db").exists():
        return where
    if not where.exists():
        raise StoreError(f"{where} does not exist: give a run directory (a folder with shoal.db)")
    if not where.is_dir():
        raise StoreError(f"{where} is not a directory")
    runs = [p for p in where.iterdir() if (p / "shoal.db").exists()]
    if not runs:
        raise StoreError(
            f"no run directories in {where}: give the path of one (a folder holding shoal.db), "
            "or start a run with `shoal run FILE.py`"
        )
    return max(runs, key=lambda p: (p / "shoal.db").stat().st_mtime)


def _rundir(run_dir: str | None) -> Path:
    return latest_run(Path(run_dir) if run_dir else Path.cwd())


def _one_run(given: str | None, option: str | None) -> str | None:
    """The run named by RUN_DIR or --run/-r (not both)."""
    if given and option and given != option:
        raise click.UsageError(f"two runs named: {given} and --run {option}; give one")
    return option or given


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _Group(click.Group):
    """Turn shoal's own errors into one clear line and an exit code, not a traceback: 2 for
    bad input, 1 for a failed task's result, 3 for a result of an interrupted run, and 130
    for Ctrl-C that reaches here (a second one) in any command, resume included."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # a second Ctrl-C (the first stops gracefully), any command
            click.secho("shoal: interrupted", fg="yellow", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except RunInterrupted as err:  # a script asked for a result the stop left undone
            click.secho(f"shoal: {err}", fg="yellow", err=True)
            sys.exit(EXIT_STOPPED)
        except TaskFailed as err:  # a script asked for the result of a failed task
            click.secho(f"shoal: {err}", fg="red", err=True)
            sys.exit(EXIT_FAILED)
        except ShoalError as err:
            click.secho(f"shoal: {err}", fg="red", err=True)
            sys.exit(EXIT_INPUT)
        except OSError as err:
            if err.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            click.secho(f"shoal: {err.strerror}: {NOFILE_FIX}", fg="red", err=True)
            sys.exit(EXIT_INPUT)
        except sqlite3.DatabaseError as err:
            if ctx.invoked_subcommand == "run":  # the script's own: keep its traceback
                raise
            click.secho(
                f"shoal: a run's store cannot be read ({err}): it is damaged or not a shoal "
                "store. Keep a copy; run the workflow again for its results.",
                fg="red",
                err=True,
            )
            sys.exit(EXIT_INPUT)


NOFILE_MIN = 64  # open files shoal needs at least (its store, log, and pipes to workers)
NOFILE_FIX = (
    "the limit on open files (ulimit -n) is too low for shoal, which holds its store, its log "
    "and pipes to every worker open. Raise it (ulimit -n 4096) and try again."
)


def _open_files() -> None:
    """Raise the soft limit on open files towards the hard one (as many tools do); refuse,
    before anything starts, when even the hard limit is too low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = hard if hard != resource.RLIM_INFINITY else 4096
    if soft != resource.RLIM_INFINITY and soft < min(4096, top):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, top), hard))
            soft = min(4096, top)
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < NOFILE_MIN:
        click.secho(f"shoal: ulimit -n is {soft}: {NOFILE_FIX}", fg="red", err=True)
        sys.exit(EXIT_INPUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shoal")
def main() -> None:
    """shoal runs ensembles of simulations and keeps the whole story on disk."""
    _open_files()


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--time-left",
    type=float,
    help="Stop starting tasks this many minutes before the allocation ends (Slurm's end "
    "time, or SHOAL_END_TIME); the run can then be resumed.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="GROUP.KEY=VALUE",
    help="For config files: override a value, e.g. --set relax.cpus=4 (repeatable).",
)
@click.option(
    "--max-tasks",
    type=int,
    default=None,
    help="For config files: the most tasks the run may have (default 10,000,000).",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(
    file: str,
    args: tuple[str, ...],
    time_left: float | None,
    sets: tuple[str, ...],
    max_tasks: int | None,
) -> None:
    """Run FILE: a Python script that builds a workflow and runs it, or an ensemble file
    (.yaml, .json, .toml: shoal's format, Ensemble Launcher JSON or ensemble-python YAML).

    Extra ARGS are passed to a script as sys.argv[1:]. Exits 1 if any task failed, 3 if
    the run was stopped early (a signal, --time-left) and can be resumed.
    """
    from shoal.cli.control import deadline
    from shoal.cli.files import FILES, run_file
    from shoal.runtime.options import defaults

    stop_at = deadline(time_left)
    path = Path(file)
    config = path.suffix.lower() in FILES
    if not config and path.suffix != ".py":
        raise click.UsageError(
            f"{file}: shoal run takes a Python script (.py) or an ensemble file "
            "(.yaml, .yml, .json, .toml)"
        )
    if config and args:
        raise click.UsageError(f"{file}: extra arguments {' '.join(args)!r} are for scripts")
    if (sets or max_tasks is not None) and not config:
        raise click.UsageError("--set and --max-tasks are for ensemble files, not for scripts")
    with defaults(cli=True, stop_at=stop_at) as ran:
        if config:
            run_file(file, sets, max_tasks)
        else:
            sys.argv = [str(path), *args]
            sys.path.insert(0, str(path.resolve().parent))
            runpy.run_path(str(path.resolve()), run_name="__main__")  # tracebacks: its path
    if not ran.runs:
        click.secho(
            f"shoal: {file} finished without running a workflow (call wf.run())",
            fg="yellow",
            err=True,
        )
    if any(r.state == "interrupted" for r in ran.runs):
        sys.exit(EXIT_STOPPED)
    if any(not r.ok for r in ran.runs):
        sys.exit(EXIT_FAILED)


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def _print_groups(groups: dict[str, Any]) -> None:
    """Per tag: counts by state, run time and queue wait, and tracked fields."""
    if not groups:
        return
    click.echo("groups (from status.json):")
    for tag, g in groups.items():
        name = "all tasks" if tag == "*" else f"tag {tag}"
        counts = "  ".join(f"{k} {v}" for k, v in g["counts"].items())
        click.echo(f"  {name}: {counts}")
        for label, s in [("runtime", g["runtime"]), ("wait", g["wait"]), *g["fields"].items()]:
            if not s["count"]:
                continue
            click.echo(
                f"    {label:<10} n {s['count']}  mean {_num(s['mean'])}  std {_num(s['std'])}"
                f"  min {_num(s['min'])}  p50 {_num(s['p50'])}  p90 {_num(s['p90'])}"
                f"  max {_num(s['max'])}"
            )


def _print_rules(rules: list[dict[str, Any]]) -> None:
    if not rules:
        return
    from shoal.runtime.steering.controller import SLOW

    click.echo("rules:")
    for r in rules:
        slow = "  SLOW" if r["slowest"] > SLOW else ""
        click.echo(
            f"  {r['rule']} ({r['trigger']}): {r['calls']} calls, {r['errors']} errors, "
            f"{r['seconds']:.3f} s in all, slowest {r['slowest'] * 1000:.1f} ms{slow}"
        )
        if r["last_error"]:
            click.secho(f"      last error: {r['last_error']}", fg="red")


@main.command()
@click.argument("run_dir", required=False)
@click.option("--run", "-r", "run_opt", help="The run directory (default: the newest one here).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--watch", is_flag=True, help="Show it again every --every seconds while live.")
@click.option(
    "--every", type=click.FloatRange(0.1), default=2.0, show_default=True, help="With --watch."
)
def status(
    run_dir: str | None, run_opt: str | None, as_json: bool, watch: bool, every: float
) -> None:
    """Counts by state, running tasks, and failures with their reasons; with --watch, again
    and again until the run is no longer live (Ctrl-C ends the watch, not the run).

    The run: --run/-r (or RUN_DIR), default the newest run directory here.
    """
    from shoal.store.runs import Life

    d = _rundir(_one_run(run_dir, run_opt))
    while True:
        if watch and not as_json and sys.stdout.isatty():
            click.clear()
        life = _show_status(d, as_json)
        sys.stdout.flush()
        if not watch or life != Life.LIVE:
            return
        time.sleep(every)
        if not as_json:
            click.echo()


def _show_status(d: Path, as_json: bool) -> str:
    """Print the status of the run in ``d``; its life."""
    from shoal.store.runs import Life, summary

    st = summary(d, details=True)
    if st["life"] == Life.LOST:
        st["state"] = "lost"
        st["note"] = (
            f"the driver (pid {st['pid']} on {st['host']}) is gone without recording an end: "
            "it was killed or its node failed"
        )
    if as_json:
        _emit(st)
        return str(st["life"])
    end = st["ended"] or time.time()
    took = f"{end - st['created']:.1f} s" if st["created"] else "?"
    click.echo(f"run {st['run']}: {st['state']}  ({took})  {st['dir']}")
    parts = "  ".join(f"{k} {v}" for k, v in sorted(st["counts"].items()))
    click.echo(f"tasks: {st['total']}  {parts}")
    cores = sum(n["cores"] for n in st["nodes"])
    gpus = sum(n["gpus"] for n in st["nodes"])
    res = st["resources"] or {}
    click.echo(
        f"resources: {len(st['nodes'])} node(s), {cores} cores, {gpus} GPUs"
        + (
            f"; in use: {res.get('cores_used')} cores, {res.get('gpus_used')} GPUs"
            if res and st["state"] == "running"
            else ""
        )
    )
    if st.get("note"):
        click.secho(f"note: {st['note']}", fg="yellow")
    if st.get("stop_reason"):
        click.echo(f"stopped: {st['stop_reason']}")
    if st["state"] == "crashed":
        why = st.get("crash_reason") or "unknown (see shoal.log)"
        click.secho(f"crashed: {why}", fg="red")
        d = st["dir"]
        click.echo(f"  the traceback is in {d}/shoal.log; go on with: shoal resume {d}")
    _print_groups(st["groups"])
    _print_rules(st["rules"])
    if st["running"]:
        if st["state"] == "running":
            click.echo(f"running ({len(st['running'])} shown):")
        else:
            click.echo(f"were running when the run stopped ({len(st['running'])} shown):")
        for t in st["running"]:
            since = time.time() - t["dispatched"] if t["dispatched"] else 0
            click.echo(f"  #{t['id']} {t['name']}  attempt {t['attempt']}  {since:.1f} s")
    if st["failures"]:
        click.echo("failures:")
        for f in st["failures"]:
            code = f" (exit {f['exit_code']})" if f["exit_code"] not in (None, 0) else ""
            click.echo(f"  #{f['id']} {f['name']}  {f['kind']}{code}: {f['reason']}")
            click.echo(f"      logs: {f['logs'] or NO_LOGS}")
    return str(st["life"])


@main.command()
@click.argument("task")
@click.option("--run", "-r", "run_dir", help="The run directory (default: the newest one here).")
@click.option(
    "--follow", "-f", is_flag=True, help="Then print what it writes, until it ends (Ctrl-C stops)."
)
def logs(task: str, run_dir: str | None, follow: bool) -> None:
    """Print a task's story, stdout, stderr and traceback. TASK is an id, a unique name, or
    the uuid of a jobflow job (its newest index)."""
    from shoal.store.runs import placement_words

    d = _rundir(run_dir)
    with Reader(d) as r:
        row = r.find(task)
        attempts = r.attempts(row.id)
        story = r.story(row.id)
        nodes = r.nodes()
    click.secho(
        f"task #{row.id} {row.name}: {row.state}" + (f" ({row.reason})" if row.reason else ""),
        bold=True,
    )
    for s in story:
        stamp = time.strftime("%H:%M:%S", time.localtime(s["time"]))
        why = f"  {s['reason']}" if s["reason"] else ""
        click.echo(f"  {stamp} {s['old'] or '-'} -> {s['new']}  [{s['event']}]{why}")
    for a in attempts:
        took = ""
        if a["started"] and a["ended"]:
            took = f" in {a['ended'] - a['started']:.3f} s"
        click.echo(
            f"  attempt {a['attempt']}: {a['outcome'] or 'running'}{took}"
            f" on {placement_words(a['placement'], nodes)}"
            + (f" ({a['worker']})" if a["worker"] else "")
        )
    folder = d / "tasks" / str(row.id)
    if follow and row.state not in _ENDED:
        _follow(d, row.id, folder)
        return
    for name in ("stdout", "stderr", "traceback.txt"):
        path = folder / name
        if path.exists() and path.stat().st_size:
            click.secho(f"--- {name} ({path})", fg="cyan")
            click.echo(path.read_text(errors="replace").rstrip())
    if not folder.exists():
        click.echo("  (the task printed nothing; no output folder was created)")


_ENDED = ("succeeded", "failed", "dep_failed", "cancelled", "skipped")


def _follow(d: Path, task: int, folder: Path, every: float = 0.2) -> None:
    """Print what the task writes to stdout and stderr as it comes (each line as
    ``[stdout] ...``), until it ends; then its traceback, if it failed.

    A running attempt on the local backend writes into its worker's spool files
    (``workers/<n>.out``, ``.err``), which move into the task's folder when it ends;
    elsewhere (a command or isolated task, another backend) into the task's folder."""
    from shoal.backends.local.worker_main import spool_of

    names = ("stdout", "stderr")
    kept = {n: _size(folder / n) for n in names}  # earlier attempts' output: not shown again
    shown = dict.fromkeys(names, 0)
    click.secho(f"--- following task #{task} (Ctrl-C stops following, not the task)", fg="cyan")
    while True:
        with Reader(d) as r:
            row = r.find(str(task))
        ended = row.state in _ENDED
        spools = None if ended else spool_of(str(d / "workers"), task, row.attempts)
        for i, name in enumerate(names):
            if spools is None:
                path, start = folder / name, kept[name] + shown[name]
            else:
                path, start = Path(spools[i]), shown[name]
            data = _read_from(path, start)
            cut = len(data) if ended else data.rfind(b"\n") + 1  # whole lines while it runs
            shown[name] += cut
            for line in data[:cut].decode(errors="replace").splitlines():
                click.echo(f"[{name}] {line}")
        sys.stdout.flush()  # a pipe (| grep) sees each line as it comes
        if ended:
            trace = folder / "traceback.txt"
            if trace.exists() and trace.stat().st_size:
                click.secho(f"--- traceback.txt ({trace})", fg="cyan")
                click.echo(trace.read_text(errors="replace").rstrip())
            click.secho(f"--- task #{task} ended: {row.state}", fg="cyan")
            return
        time.sleep(every)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> bytes:
    """The bytes of ``path`` from ``offset`` on (nothing if it is shorter, or absent)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _register() -> None:
    from shoal.cli.control import register

    register(main, _rundir)
    from shoal.cli.files import register as register_files
    from shoal.cli.slurm import register as register_slurm

    register_files(main)
    register_slurm(main)
    from shoal.cli.look import register as register_look

    register_look(main, _rundir, _one_run)
    from shoal.cli.web import register as register_web

    register_web(main)
    from shoal.cli.hosts import register as register_hosts
    from shoal.cli.remote import register as register_remote

    register_hosts(main)
    register_remote(main)
    from shoal.cli.agents import register as register_agents

    register_agents(main)


_register()

if __name__ == "__main__":
    main()
