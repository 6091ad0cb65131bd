"""``shoal host add|list|show|remove|check``: the remote hosts runs can be sent to."""

from __future__ import annotations

import json
import sys

import click

from shoal.batch import Kind


@click.group()
def host() -> None:
    """Remote hosts (clusters reached over SSH) that runs can be sent to."""


def register(main: click.Group) -> None:
    main.add_command(host)


@host.command("add")
@click.argument("name")
@click.option("--ssh", "ssh", required=True, help="user@host, or a Host of ~/.ssh/config.")
@click.option("--port", type=int, help="SSH port (default: ssh's).")
@click.option("--identity", "-i", help="A private key file (ssh -i).")
@click.option("--proxy-jump", "-J", help="Jump through this host (ssh -J).")
@click.option("--ssh-option", "-o", multiple=True, help="More ssh -o Key=value options.")
@click.option(
    "--batch",
    type=click.Choice([k.value for k in Kind]),
    default=Kind.SHELL.value,
    show_default=True,
    help="The host's batch system (shell: none, jobs run in the background).",
)
@click.option(
    "--workdir",
    default="shoal",
    show_default=True,
    help="Folder for runs there ($VARIABLES and ~ allowed; relative: to the home folder).",
)
@click.option("--pre-run", multiple=True, help="A line to run before shoal (repeatable).")
@click.option("--account", help="Batch account (project) charged.")
@click.option("--queue", help="Batch queue (Slurm: partition).")
@click.option("--option", "options", multiple=True, help="A batch directive for every job.")
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Trust the host's key when it is seen for the first time (default: only keys "
    "already in known_hosts).",
)
@click.option("--known-hosts", help="A known_hosts file to use instead of your own.")
@click.option("--replace", is_flag=True, help="Replace a host of that name.")
@click.option(
    "--project",
    is_flag=True,
    help="Record it in ./shoal-hosts.yaml, the project's hosts (to share), not your own.",
)
def add(name: str, ssh: str, replace: bool, project: bool, **fields: object) -> None:
    """Record host NAME (nothing is contacted; shoal host check NAME tries it)."""
    from shoal.remote import hosts

    given = {k: v for k, v in fields.items() if v not in (None, (), False)}
    for key in ("ssh_option", "pre_run", "options"):
        if key in given:
            given[key] = tuple(given[key])  # type: ignore[arg-type]
    if "ssh_option" in given:
        given["ssh_options"] = given.pop("ssh_option")
    h = hosts.make(name=name, ssh=ssh, **given)
    path = hosts.save(h, replace=replace, project=project)
    click.echo(f"host {name} recorded in {path}; try it: shoal host check {name}")


@host.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_hosts(as_json: bool) -> None:
    """The hosts recorded."""
    from shoal.remote import hosts

    found = hosts.load()
    if as_json:
        click.echo(json.dumps([h.as_dict() for h in found.values()], indent=2))
        return
    if not found:
        click.echo("no hosts yet: shoal host add NAME --ssh USER@HOST --batch slurm")
    for h in found.values():
        port = f":{h.port}" if h.port else ""
        mark = "  (project)" if hosts.where(h.name).name == hosts.PROJECT else ""
        click.echo(f"{h.name:<16} {h.ssh}{port:<6} {h.batch.value:<7} {h.workdir}{mark}")


@host.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Everything recorded of host NAME."""
    from shoal.remote import hosts

    click.echo(json.dumps(hosts.find(name).as_dict(), indent=2))


@host.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Forget host NAME (its runs there are left alone)."""
    from shoal.remote import hosts

    hosts.remove(name)
    click.echo(f"host {name} removed")


@host.command("check")
@click.argument("name")
@click.option(
    "--interactive/--batch-mode",
    default=None,
    help="Allow ssh to ask for a password or one-time code (default: when on a terminal).",
)
def check(name: str, interactive: bool | None) -> None:
    """Try each part a remote run needs on host NAME: the SSH login, the work folder,
    the batch system's commands, and shoal (after pre_run). Exit 1 if one fails."""
    from shoal.remote import hosts
    from shoal.remote.check import check as run_check
    from shoal.remote.ssh import Connection

    h = hosts.find(name)
    asks = sys.stdin.isatty() if interactive is None else interactive
    steps = run_check(h, Connection(h, interactive=asks))
    for s in steps:
        mark = click.style("ok  ", fg="green") if s.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark} {s.what}: {s.said}")
    if not all(s.ok for s in steps):
        sys.exit(1)
