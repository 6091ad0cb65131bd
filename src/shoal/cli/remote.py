"""``shoal remote submit|list|fetch`` and the commands that look at or change a remote run
(``status``, ``tasks``, ``logs``, ``result``, ``explain``, ``retry``, ``rerun``, ``cancel``,
``stop``): each runs the remote ``shoal`` over SSH in the run's folder there, so it reads and
answers exactly as it does on the cluster."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

# Commands passed through to the remote shoal, with what each does
PASSED = {
    "status": "Counts, running tasks and failures of the run.",
    "tasks": "Its tasks (shoal tasks' options: --state, --name, --tag, --sort...).",
    "logs": "A task's story, stdout, stderr and traceback.",
    "result": "A finished task's result.",
    "explain": "Why a task is not running.",
    "retry": "Run failed or cancelled tasks again.",
    "rerun": "Run finished tasks again.",
    "cancel": "Cancel tasks.",
    "stop": "Stop the run (it can be resumed).",
}


@click.group()
def remote() -> None:
    """Runs sent to remote hosts (shoal host add): submit, list, look, control, fetch."""


def register(main: click.Group) -> None:
    main.add_command(remote)
    main.add_command(chain)
    for name, doc in PASSED.items():
        remote.add_command(_passed(name, doc))


@remote.command("submit", context_settings={"ignore_unknown_options": True})
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--to", "to", required=True, help="The host (shoal host list).")
@click.option("--nodes", default=1, show_default=True, help="Nodes of the allocation.")
@click.option("--time", "limit", default="1:00:00", show_default=True, help="Time limit.")
@click.option("--include", multiple=True, help="Inputs to stage too (globs beside FILE).")
@click.option("--option", "options", multiple=True, help="A batch directive for this job.")
@click.option(
    "--until-done",
    is_flag=True,
    help="Chain allocations: each submits its continuation, which resumes the run, until "
    "the run ends (or an allocation finishes no task).",
)
@click.option(
    "--time-left",
    type=float,
    help="Minutes before the allocation's end at which the driver stops starting tasks "
    "(default: 5%% of --time, 0.5 to 10).",
)
def submit(
    file: str,
    args: tuple[str, ...],
    to: str,
    nodes: int,
    limit: str,
    include: tuple[str, ...],
    options: tuple[str, ...],
    until_done: bool,
    time_left: float | None,
) -> None:
    """Send FILE (a workflow script or a config file) to a host: stage it and its inputs,
    submit a batch job that runs it there, and record the run. Extra ARGS are passed to a
    script as sys.argv[1:], as by shoal run."""
    from shoal.batch import seconds
    from shoal.remote import hosts
    from shoal.remote.submit import submit as send

    h = hosts.find(to)
    run = send(
        h,
        Path(file),
        nodes=nodes,
        limit=seconds(limit),
        include=include,
        options=options,
        until_done=until_done,
        minutes_left=time_left,
        args=args,
    )
    click.echo(f"remote run {run.name}: batch job {run.job} on {to} ({h.batch.value})")
    click.echo(f"  folder there: {run.folder}")
    click.echo(f"  follow it: shoal remote status {run.name}; shoal remote list")


@remote.command("resume")
@click.argument("run")
def resume(run: str) -> None:
    """Submit RUN's batch script again: a new job resumes the run where the last one left it
    (an allocation that expired, a job killed or cancelled, tasks retried)."""
    from shoal.remote import registry
    from shoal.remote.submit import resubmit

    r = registry.get(run)
    again = resubmit(r, registry.host_of(r))
    click.echo(f"remote run {again.name}: batch job {again.job} on {again.host} resumes it")


@remote.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_runs(as_json: bool) -> None:
    """Every remote run: host, batch job and its state (asked of each host now)."""
    from shoal.remote.follow import refresh

    runs = refresh()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in runs], indent=2))
        return
    if not runs:
        click.echo("no remote runs yet: shoal remote submit FILE --to HOST")
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.submitted))
        note = f"  ({r.note})" if r.note else ""
        click.echo(f"{r.name:<34} {r.host:<12} job {r.job or '-':<10} {r.state:<10} {when}{note}")


@remote.command("fetch")
@click.argument("run")
@click.option("--to", "dest", type=click.Path(file_okay=False), help="Where (default: ./RUN).")
def fetch(run: str, dest: str | None) -> None:
    """Copy the remote run's folder (its run directory, inputs and batch output) here; a
    copy cut off is resumed when asked again."""
    from shoal.remote import registry
    from shoal.remote.ssh import Connection

    r = registry.get(run)
    local = Path(dest or r.name)
    local.mkdir(parents=True, exist_ok=True)
    Connection(registry.host_of(r)).get(r.folder + "/", local)
    click.echo(f"{r.name} -> {local}")


@remote.command("dashboard")
@click.argument("run")
@click.option("--port", default=0, help="Port here (default: any free one).")
def dashboard(run: str, port: int) -> None:
    """The dashboard of RUN, served on its host (bound to its 127.0.0.1, every request
    needing the token) and reached through the SSH connection; Ctrl-C stops both."""
    from shoal.remote import registry
    from shoal.remote.ssh import Connection
    from shoal.remote.tunnel import open_tunnel

    r = registry.get(run)
    tunnel = open_tunnel(Connection(registry.host_of(r)), r.folder, port)
    click.echo(f"dashboard of {r.name} on {r.host}: {tunnel.link}")
    click.echo("  (Ctrl-C stops it)")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        tunnel.close()


@click.command("chain", hidden=True)
@click.argument("file")
@click.option("--batch", "kind", required=True)
@click.option("--script", required=True)
@click.option("--time-left", type=float, required=True)
@click.option("--until-done", is_flag=True)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def chain(
    file: str, kind: str, script: str, time_left: float, until_done: bool, args: tuple[str, ...]
) -> None:
    """One batch job of a remote run (what shoal remote submit writes into job.sh): run or
    resume the run in this folder; with --until-done, keep a continuation queued. ARGS
    (after --) are the script's."""
    from shoal.remote.chain import run_link

    sys.exit(run_link(Path.cwd(), file, kind, script, time_left, until_done, args))


def _passed(name: str, doc: str) -> click.Command:
    @click.command(
        name, help=f"{doc} Runs `shoal {name} ARGS` in RUN's folder there.",
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    )  # fmt: skip
    @click.argument("run")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(run: str, args: tuple[str, ...]) -> None:
        from shoal.remote import registry
        from shoal.remote.ssh import Connection
        from shoal.remote.submit import in_folder

        r = registry.get(run)
        conn = Connection(registry.host_of(r))
        out = conn.run(in_folder(r.folder, ["shoal", name, *args]), environment=True)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        sys.exit(out.code)

    return command
