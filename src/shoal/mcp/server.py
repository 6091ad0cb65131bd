"""``shoal mcp``: the MCP server (the official SDK's ``MCPServer``), over stdio or streamable
HTTP. Read tools always; write tools only with ``--allow-write``; every path under ``--base``;
the config-file reference and the examples as resources; the ensemble tools of the server's
own script. HTTP binds 127.0.0.1 and every request needs the token (``Authorization: Bearer``).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from shoal.errors import ShoalError
from shoal.mcp import tools as t
from shoal.mcp.ensemble import EnsembleTool, registered, rows
from shoal.mcp.ensemble import tools as ensemble_tools
from shoal.mcp.guard import Guard, Refused

ROOT = Path(__file__).resolve().parents[3]  # the source tree: docs/ and examples/ (if present)
WAIT_STEP = 1.0  # seconds between progress notifications
INSTRUCTIONS = """shoal runs ensembles of simulations. Read a run with list_runs, status,
tasks, logs, result, explain and report; check a config file with plan before you submit it
(the resource shoal://docs/config is its reference). submit, retry, rerun, cancel and stop
need a server started with --allow-write. Errors are JSON: error, what, where, fix."""


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a tool's body; a refusal or a shoal error becomes a tool error an agent reads."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return fn(*args, **kwargs)
    except Refused as r:
        raise ToolError(r.as_json()) from None
    except ShoalError as err:
        refused = Refused("error", str(err), fn.__name__, "read the message; status shows the run")
        raise ToolError(refused.as_json()) from None


def build(guard: Guard) -> MCPServer[Any]:
    """The server, with its tools and resources."""
    from importlib.metadata import version

    srv = MCPServer(
        "shoal", instructions=INSTRUCTIONS, version=version("shoal"), log_level="WARNING"
    )
    _read_tools(srv, guard)
    _write_tools(srv, guard)
    _resources(srv)
    for tool in ensemble_tools().values():
        _ensemble(srv, guard, tool)
    return srv


def _read_tools(srv: MCPServer[Any], g: Guard) -> None:
    @srv.tool()
    def list_runs() -> dict[str, Any]:
        """Every run under the server's folder, newest first: life, counts, timing."""
        return {"runs": _call(t.list_runs, g)}

    @srv.tool()
    def status(run: str | None = None) -> dict[str, Any]:
        """A run's state, counts by state, running tasks and failures with their reasons
        (run: its folder relative to the server's, as the field folder of list_runs, submit
        and wait gives it; default the newest run)."""
        return dict(_call(t.status, g, run))

    @srv.tool()
    def tasks(
        run: str | None = None,
        states: list[str] | None = None,
        name: str | None = None,
        tag: str | None = None,
        sort: str = "id",
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Tasks of a run with their state, attempts, start, run time and reason; filter by
        states, a name glob and a tag; page with limit and offset."""
        return dict(_call(t.tasks, g, run, states or [], name, tag, sort, limit, offset))

    @srv.tool()
    def logs(task: str, run: str | None = None) -> dict[str, Any]:
        """A task's story, attempts, and the tails of its stdout, stderr and traceback."""
        return dict(_call(t.logs, g, run, task))

    @srv.tool()
    def result(task: str, run: str | None = None) -> dict[str, Any]:
        """A succeeded task's result."""
        return dict(_call(t.result, g, run, task))

    @srv.tool()
    def explain(task: str, run: str | None = None) -> dict[str, Any]:
        """Why a task is not running (dependencies, resources, the run), or how it ended."""
        return dict(_call(t.explain, g, run, task))

    @srv.tool()
    def report(run: str | None = None) -> dict[str, Any]:
        """Write the run's HTML report; its summary numbers and the PNG figures' paths."""
        return dict(_call(t.report, g, run))

    @srv.tool()
    def plan(file: str | None = None, yaml: str | None = None, first: int = 3) -> dict[str, Any]:
        """What a config file (or inline YAML) would run, without running it: tasks per
        group, the first commands, resources, rules."""
        return dict(_call(t.plan, g, file, yaml, first))

    @srv.tool()
    async def wait(ctx: Context, run: str | None = None, timeout: float = 600) -> dict[str, Any]:
        """Wait until a run is no longer live (or timeout seconds), reporting progress as
        tasks finish; then its status."""
        d = _call(g.run, run)
        return await _wait(ctx, g, d, timeout)


async def _await_driver(d: Path, proc: Any, within: float = 60.0) -> None:
    """Until the driver just started holds the run in ``d``, or has ended already."""
    import anyio

    from shoal.runtime.requests import attach

    deadline = time.monotonic() + within
    while proc.poll() is None and not attach(d).live and time.monotonic() < deadline:
        await anyio.sleep(0.05)


async def _wait(ctx: Context, g: Guard, d: Path, timeout: float) -> dict[str, Any]:
    """Report progress (finished of all tasks) until the run in ``d`` ends or ``timeout``."""
    import anyio

    from shoal.runtime.requests import attach
    from shoal.store.runs import Life, summary

    ended = ("succeeded", "failed", "dep_failed", "cancelled", "skipped")
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        st = await anyio.to_thread.run_sync(summary, d)
        done = sum(v for k, v in st["counts"].items() if k in ended)
        await ctx.report_progress(done, st["total"] or None, f"{done} of {st['total']} finished")
        # a driver holds the run's lock from its start, before it rewrites the status
        live = st["life"] == Life.LIVE or attach(d).live
        if not live or time.monotonic() >= deadline:
            out: dict[str, Any] = t._jsonable(await anyio.to_thread.run_sync(summary, d, True))
            out["waited"] = "timeout" if live else "ended"
            out["folder"] = str(d.relative_to(g.base))  # what the tools' run argument takes
            return out
        await anyio.sleep(WAIT_STEP)


def _write_tools(srv: MCPServer[Any], g: Guard) -> None:
    @srv.tool()
    async def submit(
        ctx: Context,
        file: str | None = None,
        yaml: str | None = None,
        run: str | None = None,
        wait: bool = False,
        timeout: float = 600,
    ) -> dict[str, Any]:
        """Run a config file (or inline YAML) under the server's folder: a new run, or into
        the live or stopped run ``run``. With wait, report progress until it ends."""
        _call(g.writing, "submit")
        path = _call(t.source, g, file, yaml)
        ens = _call(t.ensemble, g, path, registered(), "file" if file else "yaml")
        if run:
            return dict(_call(t.into, g, _call(g.run, run), ens))
        d = _call(t.start, g, path)
        if wait:
            return await _wait(ctx, g, d, timeout)
        return {"folder": str(d.relative_to(g.base)), "dir": str(d), "started": True}

    @srv.tool()
    async def resume(
        ctx: Context, run: str | None = None, wait: bool = False, timeout: float = 600
    ) -> dict[str, Any]:
        """Start a driver on a run that no driver runs (stopped, crashed, or ended with
        requests queued, such as a retry): it carries them out and runs what is left."""
        _call(g.writing, "resume")
        d, proc = _call(t.resume, g, run)
        if wait:
            await _await_driver(d, proc)
            return await _wait(ctx, g, d, timeout)
        return {"folder": str(d.relative_to(g.base)), "dir": str(d), "started": True}

    @srv.tool()
    def retry(
        run: str | None = None,
        tasks: list[str] | None = None,
        failed: bool = False,
        tag: str | None = None,
    ) -> dict[str, Any]:
        """Run failed or cancelled tasks again (ids or names, every failed one, or a tag);
        what failed because of them runs again too."""
        _call(g.writing, "retry")
        return dict(_call(t.control, g, run, "retry", tasks=tasks, failed=failed, tag=tag))

    @srv.tool()
    def rerun(
        run: str | None = None,
        tasks: list[str] | None = None,
        tag: str | None = None,
        downstream: bool = False,
    ) -> dict[str, Any]:
        """Run finished tasks again (and, downstream, what depends on them)."""
        _call(g.writing, "rerun")
        return dict(_call(t.control, g, run, "rerun", tasks=tasks, tag=tag, downstream=downstream))

    @srv.tool()
    def cancel(
        run: str | None = None, tasks: list[str] | None = None, tag: str | None = None
    ) -> dict[str, Any]:
        """Cancel tasks (ids or names) or a tag; what depends on them ends as cancelled."""
        _call(g.writing, "cancel")
        return dict(_call(t.control, g, run, "cancel", tasks=tasks, tag=tag))

    @srv.tool()
    def stop(run: str | None = None, now: bool = False) -> dict[str, Any]:
        """Stop a live run (resumable): nothing new starts; running tasks finish, or with
        now are cancelled."""
        _call(g.writing, "stop")
        return dict(_call(t.control, g, run, "stop", now=now))


def _resources(srv: MCPServer[Any]) -> None:
    docs = ROOT / "docs" / "config.md"
    examples = ROOT / "examples"

    @srv.resource("shoal://docs/config", mime_type="text/markdown")
    def config_reference() -> str:
        """The reference of shoal's config files (groups, sweeps, rules, options)."""
        if docs.is_file():  # a source checkout; an installed wheel has the schema only
            return docs.read_text()
        return "See docs/config.md in shoal's sources; shoal://schema/config is the schema."

    @srv.resource("shoal://examples/{name}", mime_type="text/plain")
    def example(name: str) -> str:
        """An example config file or script of shoal's (ising.yaml, commands.py, ...)."""
        wanted = (examples / name).resolve()
        if not wanted.is_relative_to(examples.resolve()) or not wanted.is_file():
            known = sorted(p.name for p in examples.glob("*.*")) if examples.is_dir() else []
            raise ValueError(f"no example {name!r}; examples: {', '.join(known)}")
        return wanted.read_text()

    @srv.resource("shoal://schema/config", mime_type="application/json")
    def config_schema() -> str:
        """The JSON schema of shoal's config files (what submit and plan accept)."""
        import json

        from shoal.config.model import ConfigModel

        return json.dumps(ConfigModel.model_json_schema())

    @srv.resource("shoal://functions", mime_type="application/json")
    def functions() -> str:
        """The Python functions config files may name through this server."""
        import json

        return json.dumps(sorted(registered()))


def _ensemble(srv: MCPServer[Any], g: Guard, tool: EnsembleTool) -> None:
    """The MCP tool of one ensemble function: each parameter a list or a sweep expression."""
    import inspect

    async def run_ensemble(ctx: Context, **given: Any) -> dict[str, Any]:
        return await _run_ensemble(ctx, g, tool, given)

    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    for p in tool.parameters:
        default = None if p.default is not inspect.Parameter.empty else inspect.Parameter.empty
        params.append(
            inspect.Parameter(
                p.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                annotation=list[Any] | str | None if default is None else list[Any] | str,
            )
        )  # fmt: skip
    extra: tuple[tuple[str, object, type], ...] = (
        ("zip", False, bool),
        ("wait", True, bool),
        ("timeout", 600.0, float),
    )
    for option, value, kind in extra:
        params.append(
            inspect.Parameter(
                option, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=kind
            )
        )
    run_ensemble.__signature__ = inspect.Signature(params, return_annotation=dict[str, Any])  # type: ignore[attr-defined]
    run_ensemble.__name__ = tool.name
    run_ensemble.__doc__ = (
        f"{tool.description}\n\nAn ensemble of {tool.fn.__name__}: give each parameter as a "
        "list of values or a sweep expression (linspace(a, b, n), range(...), ...); every "
        "combination runs (zip=true: the lists side by side). wait=false returns the run's "
        "folder at once (follow it with wait and status)."
    )
    srv.tool(name=tool.name)(run_ensemble)


async def _run_ensemble(
    ctx: Context, g: Guard, tool: EnsembleTool, given: dict[str, Any]
) -> dict[str, Any]:
    from shoal.runtime.api import submit
    from shoal.spec.task import task as make_task
    from shoal.spec.workflow import Workflow

    if not g.write:
        _call(g.writing, tool.name)
    zipped = bool(given.pop("zip", False))
    wait = bool(given.pop("wait", True))
    timeout = float(given.pop("timeout", 600.0))
    calls = _call(rows, tool, given, zipped)
    task = make_task(tool.fn).options(**tool.options) if tool.options else make_task(tool.fn)
    with Workflow(tool.name) as wf:
        made = [task(**c) for c in calls]
    run = submit(wf, base=g.base)
    d = Path(run.dir)
    if not wait:
        return {"folder": str(d.relative_to(g.base)), "dir": str(d), "tasks": len(made)}
    out = await _wait(ctx, g, d, timeout)
    if out["waited"] == "ended":
        out["results"] = [{"args": c, **_outcome(run, m)} for c, m in zip(calls, made, strict=True)]
    return out


def _outcome(run: Any, task: Any) -> dict[str, Any]:
    from shoal.errors import TaskFailed

    try:
        return {"result": t._jsonable(run.result(task))}
    except TaskFailed as err:
        return {"error": str(err)}
    except ShoalError as err:
        return {"error": str(err)}


# -- transports ------------------------------------------------------------------------------
def serve_stdio(srv: MCPServer[Any]) -> None:
    srv.run("stdio")


def http_app(srv: MCPServer[Any], token: str) -> Any:
    """The streamable HTTP app, behind a check of the bearer token on every request."""
    app = srv.streamable_http_app()
    expected = f"Bearer {token}".encode()

    async def guarded(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                body = (
                    b'{"error": "unauthorized", "what": "this server needs its token", '
                    b'"where": "Authorization header", "fix": "send Authorization: Bearer '
                    b'TOKEN (printed by shoal mcp --http)"}'
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded
