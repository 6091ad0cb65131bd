"""``shoal mcp``: serve the MCP server for agents (over stdio, or streamable HTTP)."""

from __future__ import annotations

import importlib.util
import secrets
import sys
from pathlib import Path

import click


def register(main: click.Group) -> None:
    @main.command("mcp")
    @click.option(
        "--base",
        type=click.Path(exists=True, file_okay=False),
        default=".",
        show_default=True,
        help="The folder the server serves: every path an agent gives must lie under it.",
    )
    @click.option("--allow-write", is_flag=True, help="Offer submit, retry, rerun, cancel, stop.")
    @click.option(
        "--script",
        "scripts",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False),
        help="A Python file that registers ensemble tools (shoal.mcp.ensemble_tool).",
    )
    @click.option("--http", is_flag=True, help="Streamable HTTP instead of stdio.")
    @click.option("--host", default="127.0.0.1", show_default=True, help="With --http.")
    @click.option("--port", default=8766, show_default=True, help="With --http (0: any).")
    @click.option(
        "--token",
        envvar="SHOAL_MCP_TOKEN",
        help="With --http: the bearer token every request needs (default: a new one, "
        "printed). Also read from SHOAL_MCP_TOKEN.",
    )
    def mcp(
        base: str,
        allow_write: bool,
        scripts: tuple[str, ...],
        http: bool,
        host: str,
        port: int,
        token: str | None,
    ) -> None:
        """Serve shoal to agents over MCP: read tools (list_runs, status, tasks, logs,
        result, explain, report, plan, wait), and with --allow-write submit, retry, rerun,
        cancel and stop; paths under --base only."""
        try:
            import mcp as _sdk  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "shoal mcp needs the MCP SDK: pip install 'shoal[mcp]'"
            ) from None
        from shoal.mcp.guard import Guard
        from shoal.mcp.server import build, http_app

        for script in scripts:
            _load(Path(script))
        srv = build(Guard(Path(base).resolve(), allow_write))
        if not http:
            srv.run("stdio")
            return
        if host not in ("127.0.0.1", "localhost", "::1") and not token:
            raise click.UsageError(f"--host {host}: give --token to listen beyond loopback")
        token = token or secrets.token_urlsafe(24)
        import uvicorn

        app = http_app(srv, token)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        server = uvicorn.Server(config)
        click.echo(f"shoal mcp: http://{host}:{port}/mcp  (Authorization: Bearer {token})")
        sys.stdout.flush()
        server.run()


def _load(path: Path) -> None:
    """Import the server's script as a module of its file's name (so that its functions
    pickle by reference, and config files can name them ``module:function``)."""
    name = path.stem
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise click.UsageError(f"--script {path}: cannot load it")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
