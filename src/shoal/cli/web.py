"""``shoal dashboard``: serve the web dashboard of the runs under a folder (or of one run)."""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import sys
import threading
from pathlib import Path

import click

PORT = 8765


def register(main: click.Group) -> None:
    @main.command()
    @click.argument("base", required=False, type=click.Path(exists=True, file_okay=False))
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option("--port", default=PORT, show_default=True, help="Port (0: any free one).")
    @click.option(
        "--token",
        envvar="SHOAL_DASHBOARD_TOKEN",
        help="The token that unlocks actions (default: a new random one, printed). Needed "
        "to bind anything but loopback. Also read from SHOAL_DASHBOARD_TOKEN.",
    )
    @click.option(
        "--private",
        is_flag=True,
        help="Every request needs the token, reading too (for a login node others share).",
    )
    def dashboard(base: str | None, host: str, port: int, token: str | None, private: bool) -> None:
        """Serve a live web view of the runs under BASE (default: here), or of the run
        BASE. It binds 127.0.0.1: reach it from a laptop through the printed ssh -L line.
        Retry, rerun, cancel and stop need the token in the printed link."""
        try:
            import uvicorn

            from shoal.dashboard.app import LOCAL_NAMES, Dashboard, create_app, loopback
            from shoal.dashboard.data import warm
        except ImportError as err:
            raise click.ClickException(
                f"the dashboard needs Starlette and uvicorn ({err.name} is missing): "
                'pip install "shoal[dashboard]"'
            ) from None
        local = loopback(host)
        if not local and not token:
            raise click.UsageError(
                f"binding {host} lets anyone who can reach this machine see the runs: give "
                "--token (or set SHOAL_DASHBOARD_TOKEN); every request then needs it"
            )
        key = token or secrets.token_urlsafe(24)
        folder = Path(base or ".").resolve()
        sock = _bind(host, port)
        bound = sock.getsockname()[1]
        # Off loopback every request needs the token, which a rebound name cannot send:
        # any name of this machine may be used then.
        names = LOCAL_NAMES if local else ("*",)
        dash = Dashboard(folder, key, open_reads=local and not private, hosts=names)
        shown = "127.0.0.1" if local else host
        link = f"http://{shown}:{bound}/#token={key}"
        click.echo(f"shoal dashboard of {folder}")
        click.echo(f"  open: {link}")
        if local:
            click.echo(
                f"  from your laptop: ssh -L {bound}:127.0.0.1:{bound} "
                f"{getpass.getuser()}@{socket.gethostname()}  then open the link above"
            )
        click.echo("  (the token in the link unlocks actions; Ctrl-C stops the dashboard)")
        sys.stdout.flush()
        # The newest runs' charts are read while the user opens the link
        threading.Thread(
            target=warm, args=(dash.catalog, dash.charts), name="shoal-warm", daemon=True
        ).start()
        config = uvicorn.Config(create_app(dash), log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise click.UsageError(
            f"cannot listen on {host}:{port} ({err.strerror}): another program uses it? "
            "Give another --port, or --port 0 for any free one"
        ) from None
    sock.listen(128)
    os.set_inheritable(sock.fileno(), False)
    return sock
