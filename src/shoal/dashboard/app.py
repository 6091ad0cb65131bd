"""The dashboard's web application (Starlette): the pages, the JSON API behind them, live
updates as server-sent events, and the actions.

Security, for a server on a shared login node:
- every page and script comes from this package (no CDN), under a Content-Security-Policy
  that allows nothing else; the pages put every value into the document as text, never as
  markup, so a task named ``<img src=x onerror=...>`` shows as those characters;
- actions (retry, rerun, cancel, stop) need the dashboard's token in the ``X-Shoal-Token``
  header of a JSON POST: a cookie proves nothing, and a page of another site can send neither
  the header nor that content type without the browser asking first (and this server allows
  no other origin);
- bound to anything but a loopback address, reading needs the token too;
- requests naming this server by another name than its address (or localhost) are refused,
  so that a site whose name an attacker points at 127.0.0.1 cannot read it (DNS rebinding);
- files are found by task id and stream name, never by a path from the request; the store is
  opened read-only, and changed only through its requests table, as the CLI does.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shoal.dashboard import data
from shoal.errors import ShoalError
from shoal.store.runs import live_status

PAGES = ("/", "/run", "/tasks", "/task", "/graph")
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
EVERY = 1.0  # seconds between looks for changes, for the live updates
ACTIONS = ("retry", "rerun", "cancel", "stop")
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


Handler = Callable[[Request], Awaitable[Response]]
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The state of one dashboard: its runs, their charts, and its token."""

    def __init__(
        self,
        base: Path,
        token: str,
        open_reads: bool = True,
        hosts: tuple[str, ...] = LOCAL_NAMES,
    ) -> None:
        self.catalog = data.Catalog(base)
        self.charts = data.Charts()
        self.token = token
        self.open_reads = open_reads  # bound to loopback: reading needs no token
        # The names the browser may use for this server (its Host header): a page of another
        # site that rebinds its own name to 127.0.0.1 sends that name, and is refused.
        self.hosts = hosts

    def holds_token(self, request: Request) -> bool:
        given = request.headers.get("x-shoal-token", "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


def _json(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers=HEADERS)


def _error(message: str, status: int) -> JSONResponse:
    return _json({"error": message}, status)


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return default
    try:
        return int(str(value))
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None


def _filters(request: Request) -> dict[str, Any]:
    """The task table's filters a request gives (``Reader.table``'s arguments)."""
    q = request.query_params
    return {
        "states": tuple(s for s in q.get("state", "").split(",") if s),
        "name": q.get("name") or None,
        "tag": q.get("tag") or None,
        "text": q.get("text") or None,
    }


def create_app(dash: Dashboard) -> Starlette:
    """The application serving ``dash``."""
    routes = [Route(p, page) for p in PAGES] + [
        Route("/favicon.ico", nothing),
        Route("/static/{name}", static),
        Route("/api/runs", guarded(runs)),
        Route("/api/run", guarded(run)),
        Route("/api/charts", guarded(charts)),
        Route("/api/tasks", guarded(tasks)),
        Route("/api/count", guarded(count)),
        Route("/api/task", guarded(task)),
        Route("/api/log", guarded(log)),
        Route("/api/graph", guarded(graph)),
        Route("/api/events", guarded(events)),
        Route("/api/action", guarded(action), methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(dash.hosts))],
    )
    app.state.dash = dash
    return app


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dash
    return dash


async def nothing(request: Request) -> Response:
    return Response(status_code=204)


def guarded(handler: Handler) -> Handler:
    """``handler`` behind the read guard, its errors as JSON: 404 for no such run or task,
    400 for bad input."""

    async def endpoint(request: Request) -> Response:
        dash = _dash(request)
        if not dash.open_reads and not dash.holds_token(request):
            return _error("this dashboard needs its token (X-Shoal-Token)", 401)
        try:
            return await handler(request)
        except data.NotFound as err:
            return _error(str(err), 404)
        except (ShoalError, ValueError) as err:
            return _error(str(err), 400)

    return endpoint


async def page(request: Request) -> Response:
    html = resources.files("shoal.dashboard").joinpath("static/app.html").read_text()
    return Response(html, media_type="text/html; charset=utf-8", headers=HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return _error(f"no file {name!r}", 404)
    text = resources.files("shoal.dashboard").joinpath(f"static/{name}").read_text()
    return Response(text, media_type=STATIC[name], headers=HEADERS)


def rundir(request: Request) -> Path:
    dash = _dash(request)
    return dash.catalog.resolve(request.query_params.get("run"))


async def runs(request: Request) -> Response:
    dash = _dash(request)
    found = await run_in_threadpool(dash.catalog.runs)
    return _json({"base": str(dash.catalog.base), "runs": found})


async def run(request: Request) -> Response:
    dash = _dash(request)
    d = rundir(request)
    return _json(await run_in_threadpool(data.run_page, dash.catalog, d))


async def charts(request: Request) -> Response:
    dash = _dash(request)
    d = rundir(request)

    def get() -> dict[str, Any]:
        st = dash.catalog.summary(d)
        return dash.charts.get(d, st.get("life", ""), st.get("ended"))

    return _json(await run_in_threadpool(get))


async def tasks(request: Request) -> Response:
    d = rundir(request)
    q = request.query_params
    limit = min(max(_int(request, "limit", 50) or 50, 1), 500)
    offset = max(_int(request, "offset", 0) or 0, 0)

    def get() -> dict[str, Any]:
        from shoal.store.queries import Reader

        with Reader(d) as r:
            rows, total = r.table(
                **_filters(request), sort=q.get("sort") or "id", limit=limit, offset=offset,
                count=False,
            )  # fmt: skip
        return {"rows": rows, "offset": offset, "limit": limit, "total": total}

    return _json(await run_in_threadpool(get))


async def count(request: Request) -> Response:
    """How many tasks match a filter of the table (a separate question: it reads every
    row of a large run, while a page does not)."""
    dash = _dash(request)
    d = rundir(request)
    q = request.query_params
    states = tuple(s for s in q.get("state", "").split(",") if s)

    def get() -> dict[str, Any]:
        from shoal.store.queries import Reader

        if not (q.get("name") or q.get("tag") or q.get("text")):
            counts = dash.catalog.summary(d).get("counts", {})
            return {"total": sum(v for k, v in counts.items() if not states or k in states)}
        with Reader(d) as r:
            _, total = r.table(**_filters(request), limit=1)
        return {"total": total}

    return _json(await run_in_threadpool(get))


async def task(request: Request) -> Response:
    d = rundir(request)
    tid = _int(request, "id")
    if tid is None:
        raise ValueError("give the task's id: ?id=N")
    return _json(await run_in_threadpool(data.task_page, d, tid))


async def log(request: Request) -> Response:
    d = rundir(request)
    tid = _int(request, "id")
    if tid is None:
        raise ValueError("give the task's id: ?id=N")
    stream = request.query_params.get("stream", "stdout")
    offset = _int(request, "offset")
    return _json(await run_in_threadpool(data.log_tail, d, tid, stream, offset))


async def graph(request: Request) -> Response:
    d = rundir(request)
    q = request.query_params
    group = {"auto": None, "name": True, "task": False}.get(q.get("group", "auto"))
    states = tuple(s for s in q.get("state", "").split(",") if s)
    return _json(await run_in_threadpool(data.graph, d, group, states, q.get("tag") or None))


async def events(request: Request) -> Response:
    """Server-sent events: ``update`` (a run's counts, resources and throughput from its
    status.json, or the runs page's "something changed") at most once a second, and only
    when something changed; a comment every 15 s keeps proxies from closing it."""
    dash = _dash(request)
    key = request.query_params.get("run")
    d = dash.catalog.resolve(key) if key else None

    async def stream() -> Any:
        last: Any = None
        quiet = 0
        while not await request.is_disconnected():
            now = await run_in_threadpool(_look, dash, d)
            if now[0] != last:
                last = now[0]
                quiet = 0
                yield f"event: update\ndata: {json.dumps(now[1])}\n\n"
            else:
                quiet += 1
                if quiet % 15 == 0:
                    yield ": still here\n\n"
            await asyncio.sleep(EVERY)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={**HEADERS, "X-Accel-Buffering": "no"}
    )


def _look(dash: Dashboard, d: Path | None) -> tuple[Any, dict[str, Any]]:
    """What the live updates compare (what changed) and send (a run's brief status)."""
    if d is None:  # the runs page: any run changed, or a new one
        keys = dash.catalog.keys()
        return tuple((k, data.changed(p)) for k, p in keys.items()), {"runs": len(keys)}
    live = live_status(d)
    if live.get("state") == "running":
        dash.charts.sample(d, live)
    brief = {
        k: live.get(k) for k in ("state", "counts", "resources", "throughput", "updated", "elapsed")
    }
    return data.changed(d), brief


async def action(request: Request) -> Response:
    dash = _dash(request)
    if not dash.holds_token(request):
        return _error(
            "actions need the dashboard's token in the X-Shoal-Token header (it was "
            "printed when the dashboard started)",
            403,
        )
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _error("send the action as JSON (Content-Type: application/json)", 415)
    try:
        body = await request.json()
    except ValueError:
        return _error("the body is not JSON", 400)
    if not isinstance(body, dict) or body.get("action") not in ACTIONS:
        return _error(f"say which action: one of {', '.join(ACTIONS)}", 400)
    d = dash.catalog.resolve(body.get("run"))
    return _json(await run_in_threadpool(act, d, body))


def act(d: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Carry out an action as the CLI does: check it against the store (a refusal raises),
    queue the request, and wait a few seconds for a live driver's answer."""
    from shoal.runtime.requests import act as queue

    a, request = queue(d, body["action"], body)
    live = a.live
    answer = a.answer(request, 5.0 if live else 0.0)
    if answer is None and not live:
        answer = f"queued: no driver runs this run; it is done when it resumes (shoal resume {d})"
    return {"request": request, "answer": answer, "live": live, "refused": _refused(answer)}


def _refused(answer: str | None) -> bool:
    return bool(answer) and str(answer).startswith(("refused", "0 task(s)"))
