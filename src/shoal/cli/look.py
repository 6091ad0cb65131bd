"""Commands that look at runs without touching them: ``shoal runs``, ``shoal result`` and
``shoal explain``. Each reads the store read-only (``store/queries.py``, ``store/runs.py``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from shoal.store.dag import MOST
from shoal.store.explain import took as _took
from shoal.store.explain import why
from shoal.store.queries import Reader
from shoal.store.runs import Life, find_runs, summary

RUN_OPTION = click.option(
    "--run", "-r", "run_dir", help="The run directory (default: the newest one here)."
)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def moment(text: str, now: float | None = None) -> float:
    """A time as given on the command line: ``30m``, ``2h``, ``1d``, ``45s`` ago, or a date
    and time (``2026-12-03 14:00``, ``2026-12-03T14:00:30``), or a time today (``14:00``)."""
    import datetime as dt
    import re

    now = time.time() if now is None else now
    ago = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if ago:
        return now - float(ago[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ago[2]]
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text.strip()):
            day = dt.datetime.fromtimestamp(now).date().isoformat()
            return dt.datetime.fromisoformat(f"{day} {text.strip()}").timestamp()
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time: give 30m, 2h, 1d (ago), 14:00 (today) or 2026-12-03 14:00"
        ) from None


def register(main: click.Group, rundir_of: Any, one_run: Any) -> None:
    """Add the commands to the ``shoal`` group (``rundir_of`` finds a run directory,
    ``one_run`` takes it from an argument or --run)."""
    _add_tasks(main, rundir_of, one_run)
    _add_runs(main, rundir_of, one_run)
    _add_result(main, rundir_of, one_run)
    _add_graph(main, rundir_of, one_run)
    _add_explain(main, rundir_of, one_run)
    _add_report(main, rundir_of, one_run)


def _add_tasks(main: click.Group, rundir_of: Any, one_run: Any) -> None:
    @main.command()
    @click.argument("run_dir", required=False)
    @click.option("--run", "-r", "run_opt", help="The run directory (default: the newest here).")
    @click.option(
        "--state",
        "states",
        multiple=True,
        help="Only tasks in these states (repeat it, or failed,dep_failed).",
    )
    @click.option("--name", help="Only tasks whose name matches this glob (relax*).")
    @click.option("--tag", help="Only tasks with this tag.")
    @click.option("--since", help="Started (or last changed) since: 30m, 2h, 14:00, a date.")
    @click.option("--until", help="Started (or last changed) until then.")
    @click.option(
        "--sort",
        default="id",
        show_default=True,
        help="id, name, state, attempts, start or runtime; -runtime: longest first.",
    )
    @click.option("--limit", type=int, default=None, help="At most this many tasks.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    def tasks(
        run_dir: str | None,
        run_opt: str | None,
        states: tuple[str, ...],
        name: str | None,
        tag: str | None,
        since: str | None,
        until: str | None,
        sort: str,
        limit: int | None,
        as_json: bool,
    ) -> None:
        """List tasks: id, name, state, attempts, start, run time and reason. The run:
        --run/-r (or RUN_DIR)."""
        from shoal.core.states import State

        if limit is not None and limit < 1:
            raise click.BadParameter(f"must be at least 1, got {limit}", param_hint="--limit")
        wanted = tuple(x.strip() for s in states for x in s.split(",") if x.strip())
        known = {s.value for s in State}
        for state in wanted:
            if state not in known:
                raise click.BadParameter(
                    f"unknown state {state!r}; states are: {', '.join(s.value for s in State)}",
                    param_hint="--state",
                )
        d = rundir_of(one_run(run_dir, run_opt))
        start = moment(since) if since else None
        end = moment(until) if until else None
        with Reader(d) as r:
            rows, total = r.table(wanted, name, tag, start, end, sort, limit)
            if as_json:
                click.echo(
                    json.dumps(
                        [{**t, "attempts": r.attempts(t["id"])} for t in rows],
                        indent=2,
                        default=str,
                    )
                )
                return
            tried = {t["id"]: r.attempts(t["id"]) for t in rows if t["attempts"] > 1}
        for t in rows:
            reason = f"  {t['reason']}" if t["reason"] else ""
            how = ""
            if t["id"] in tried:  # what became of each attempt
                how = " (" + ", ".join(a["kind"] or a["outcome"] or "?" for a in tried[t["id"]])
                how += ")"
            began = time.strftime("%H:%M:%S", time.localtime(t["started"])) if t["started"] else "-"
            took = "-" if t["runtime"] is None else f"{t['runtime']:.2f} s"
            click.echo(
                f"{t['id']:>6}  {t['name']:<24} {t['state']:<10} attempts {t['attempts']}{how}"
                f"  {began:>8} {took:>10}{reason}"
            )
        if not rows:
            click.echo("no tasks" + (f" in state {', '.join(wanted)}" if wanted else ""), err=True)
        elif total is not None and total > len(rows):
            click.echo(f"({len(rows)} of {total} shown)", err=True)


def _add_runs(main: click.Group, rundir_of: Any, one_run: Any) -> None:
    @main.command()
    @click.argument("base", required=False, type=click.Path(file_okay=False))
    @click.option("--depth", type=click.IntRange(0, 10), default=3, help="Folders to descend.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    def runs(base: str | None, depth: int, as_json: bool) -> None:
        """The runs under BASE (default: here), newest first: what each is now (live,
        finished, interrupted, crashed, lost), its tasks, start, duration and throughput."""
        where = Path(base) if base else Path.cwd()
        if not where.is_dir():
            raise click.BadParameter(f"{where} is not a directory", param_hint="BASE")
        found = [summary(d) for d in find_runs(where, depth)]
        if as_json:
            click.echo(json.dumps(found, indent=2, default=str))
            return
        if not found:
            click.echo(f"no runs under {where} (looked {depth} folders down)", err=True)
            return
        click.echo(
            f"{'life':<12} {'outcome':<11} {'tasks':>13} {'failed':>7}  {'started':<16} "
            f"{'took':>9} {'tasks/s':>8}  run"
        )
        for s in found:
            done = sum(v for k, v in s["counts"].items() if k in ("succeeded", "failed"))
            bad = sum(
                v for k, v in s["counts"].items() if k in ("failed", "dep_failed", "cancelled")
            )
            rate = (s["throughput"] or {}).get("overall")
            shown = Path(s["dir"])
            with_base = shown.relative_to(where) if shown.is_relative_to(where) else shown
            outcome = s["state"] if s["life"] == Life.FINISHED else "-"
            tally = f"{done}/{s['total']}"
            click.echo(
                f"{s['life']:<12} {outcome:<11} {tally:>13} {bad:>7}  "
                f"{_when(s['created']):<16} {_took(s['duration']):>9} "
                f"{'-' if rate is None else f'{rate:.1f}':>8}  {with_base}"
            )


def _add_result(main: click.Group, rundir_of: Any, one_run: Any) -> None:
    @main.command()
    @click.argument("task")
    @RUN_OPTION
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def result(task: str, run_dir: str | None, as_json: bool) -> None:
        """Print a finished task's result (TASK: id, name or a jobflow uuid), read from the
        store without touching the run. Exits 1 for a task that failed, 2 for one that has
        not finished."""
        from shoal.runtime.imports import restored

        d = rundir_of(run_dir)
        with Reader(d) as r:
            row = r.find(task)
            if row.state != "succeeded":
                why = f": {row.reason}" if row.reason else ""
                click.secho(f"shoal: task #{row.id} {row.name} is {row.state}{why}", err=True)
                sys.exit(1 if row.state in ("failed", "dep_failed", "cancelled") else 2)
            meta = r.meta()
            with restored(meta):  # the run's import path: its classes unpickle
                value = r.result(row.id)
        if as_json:
            click.echo(json.dumps(value, indent=2, default=repr))
        else:
            import pprint

            click.echo(pprint.pformat(value, width=100))


def _add_graph(main: click.Group, rundir_of: Any, one_run: Any) -> None:
    @main.command()
    @RUN_OPTION
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["mermaid", "dot", "png"]),
        default="mermaid",
        show_default=True,
    )
    @click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write it here.")
    @click.option(
        "--group/--no-group",
        default=None,
        help=f"One box per task name (default: above {MOST} tasks).",
    )
    @click.option("--state", "states", multiple=True, help="Only tasks in this state.")
    @click.option("--tag", help="Only tasks with this tag.")
    def graph(
        run_dir: str | None,
        fmt: str,
        output: str | None,
        group: bool | None,
        states: tuple[str, ...],
        tag: str | None,
    ) -> None:
        """The run's task graph, coloured by state: Mermaid or dot text (printed, or to
        --output), or a PNG picture (--output, default graph.png in the run directory).
        --state and --tag draw a selection: those tasks and the dependencies among them."""
        from shoal.store import dag

        d = rundir_of(run_dir)
        wanted = tuple(x.strip() for s in states for x in s.split(",") if x.strip())
        g = dag.dag(d, group=group, states=wanted, tag=tag)
        if fmt == "png":
            from shoal.report.figures import draw_dag

            path = Path(output) if output else d / "graph.png"
            draw_dag(g, path, d.name)
            click.echo(str(path))
            return
        text = dag.mermaid(g) if fmt == "mermaid" else dag.dot(g)
        if output:
            Path(output).write_text(text)
            click.echo(output)
        else:
            click.echo(text, nl=False)


def _add_explain(main: click.Group, rundir_of: Any, one_run: Any) -> None:
    @main.command()
    @click.argument("task")
    @RUN_OPTION
    def explain(task: str, run_dir: str | None) -> None:
        """Why TASK is not running (its dependencies, the resources it needs against what is
        free, the run itself), or what became of it."""
        d = rundir_of(run_dir)
        for line in why(d, task):
            click.echo(line)


def _add_report(main: click.Group, rundir_of: Any, one_run: Any) -> None:
    @main.command()
    @click.argument("run_dir", required=False)
    @click.option("--run", "-r", "run_opt", help="The run directory (default: the newest here).")
    @click.option("--output", "-o", type=click.Path(dir_okay=False), help="The HTML file to write.")
    def report(run_dir: str | None, run_opt: str | None, output: str | None) -> None:
        """Write a self-contained HTML report of a run (finished, crashed or live), with PNG
        figures beside it: utilization, a Gantt chart, run times and queue waits by tag,
        failures by kind, throughput, and the efficiency (busy core-seconds / capacity).
        Default: report/report.html in the run directory."""
        from shoal.report.build import report as build

        d = rundir_of(one_run(run_dir, run_opt))
        started = time.monotonic()
        path = build(d, Path(output) if output else None)
        click.echo(f"{path}  ({time.monotonic() - started:.1f} s)")
