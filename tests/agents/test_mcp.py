"""``shoal mcp`` driven by the MCP SDK's own client, as an agent would: over stdio (the
server a subprocess) and over streamable HTTP (with and without its token). The agent lists
runs, plans a sweep, submits it, waits with progress, reads the log of the task that failed,
fixes its cause, retries it, resumes the run and reads the results; it runs an ensemble of a
function the server's script registered; and its attempts to leave the base folder, to write
on a read-only server, to run unregistered Python, and its malformed arguments are refused
with structured errors (error, what, where, fix)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

mcp = pytest.importorskip("mcp", reason="needs the MCP SDK (pip install 'shoal[mcp]')")
anyio = pytest.importorskip("anyio")

from mcp import Client, StdioServerParameters  # noqa: E402

SWEEP = """\
groups:
  a:
    command: echo value {x}
    sweep: {x: [1, 2, 3]}
  flaky:
    command: cat go.txt
"""

TOOLS = '''
import shoal.mcp

@shoal.mcp.ensemble_tool(cpus=1)
def square(x, power=2):
    """x to the power."""
    return x ** power
'''

FOREIGN = """\
groups:
  f:
    function: "evil:boom"
    sweep: {x: [1]}
"""


def _stdio(base: Path, *extra: str) -> Client:
    args = ["-m", "shoal.cli.main", "mcp", "--base", str(base), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return Client(StdioServerParameters(command=sys.executable, args=args, env=env, cwd=base))


def _error(result: Any) -> dict[str, Any]:
    """The structured error of a refused call (its JSON follows the SDK's prefix)."""
    assert result.is_error, result
    text = result.content[0].text
    return dict(json.loads(text[text.index("{") :]))


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test)


def test_an_agent_plans_submits_watches_repairs_and_reads_over_stdio(tmp_path: Path) -> None:
    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))

    async def agent() -> None:
        client = _stdio(tmp_path, "--allow-write", "--script", str(tmp_path / "tools.py"))
        async with client as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"list_runs", "plan", "submit", "wait", "logs", "retry", "square"} <= names
            assert (await c.call_tool("list_runs", {})).structured_content == {"runs": []}
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert {"shoal://docs/config", "shoal://schema/config"} <= uris, uris
            ref = await c.read_resource("shoal://docs/config")
            assert "sweep" in ref.contents[0].text
            schema = json.loads((await c.read_resource("shoal://schema/config")).contents[0].text)
            assert "groups" in schema["properties"]
            example = await c.read_resource("shoal://examples/ising.yaml")
            assert "groups:" in example.contents[0].text
            fns = json.loads((await c.read_resource("shoal://functions")).contents[0].text)
            assert fns == ["tools:square"]
            planned = (await c.call_tool("plan", {"yaml": SWEEP})).structured_content
            assert planned["tasks"] == 4 and planned["groups"][0]["first"][0] == "echo value 1"

            progress: list[tuple[float, float | None]] = []

            async def seen(done: float, total: float | None, message: str | None) -> None:
                progress.append((done, total))

            sent = await c.call_tool(
                "submit", {"yaml": SWEEP, "wait": True}, progress_callback=seen
            )
            out = sent.structured_content
            assert not sent.is_error and out["waited"] == "ended", sent
            assert out["counts"] == {"succeeded": 3, "failed": 1}
            assert progress and progress[-1] == (4, 4)
            run_dir = Path(out["dir"])
            assert run_dir.parent == tmp_path and out["folder"] == run_dir.name
            (failed,) = out["failures"]
            logs = (await c.call_tool("logs", {"task": str(failed["id"])})).structured_content
            assert logs["state"] == "failed" and "go.txt" in (logs["stderr"] or ""), logs

            (tmp_path / "go.txt").write_text("ready\n")  # the agent fixes the cause
            retried = await c.call_tool("retry", {"run": run_dir.name, "tasks": ["flaky"]})
            assert not retried.is_error and retried.structured_content["live"] is False
            resumed = await c.call_tool("resume", {"run": run_dir.name, "wait": True})
            assert resumed.structured_content["counts"] == {"succeeded": 4}, resumed
            value = await c.call_tool("result", {"run": run_dir.name, "task": "flaky"})
            assert value.structured_content["result"]["stdout"] == "ready\n"
            listed = await c.call_tool("tasks", {"run": run_dir.name, "limit": 2, "offset": 1})
            page = listed.structured_content
            assert page["total"] == 4 and [t["id"] for t in page["tasks"]] == [1, 2]

            ens = await c.call_tool("square", {"x": "range(5)", "power": [3]})
            results = ens.structured_content["results"]
            assert [r["result"] for r in results] == [0, 1, 8, 27, 64], ens
            assert [r["args"] for r in results][2] == {"x": 2, "power": 3}
            zipped = await c.call_tool("square", {"x": [2, 3], "power": [1, 2], "zip": True})
            assert [r["result"] for r in zipped.structured_content["results"]] == [2, 9]
            later = await c.call_tool("square", {"x": [5], "wait": False})
            assert (tmp_path / later.structured_content["folder"]).is_dir()

    run(agent)


def test_what_an_agent_may_not_do_is_refused_with_structured_errors(tmp_path: Path) -> None:
    pwned = str(tmp_path / "pwned")
    (tmp_path / "evil.py").write_text(f"open({pwned!r}, 'w').close()\ndef boom(x): return x\n")
    (tmp_path / "foreign.yaml").write_text(FOREIGN)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "x.yaml").write_text(SWEEP)
    (tmp_path / "link.yaml").symlink_to(outside / "x.yaml")

    async def agent() -> None:
        async with _stdio(tmp_path) as c:  # read-only
            refused = _error(await c.call_tool("submit", {"yaml": SWEEP}))
            assert refused["error"] == "read_only" and "--allow-write" in refused["fix"]
            assert _error(await c.call_tool("stop", {}))["error"] == "read_only"
            assert not list(tmp_path.glob("inline-*"))  # nothing ran
            await c.call_tool("plan", {"yaml": SWEEP})
            assert not (tmp_path / ".shoal-mcp").exists()  # a read-only server writes nothing
            for where in ("../", str(outside), "link.yaml"):
                err = _error(await c.call_tool("plan", {"file": where}))
                assert err["error"] in ("outside_base", "bad_argument"), err
            err = _error(await c.call_tool("plan", {"file": "link.yaml"}))
            assert err["error"] == "outside_base" and err["where"] == "file"
            err = _error(await c.call_tool("status", {"run": "../"}))
            assert err["error"] == "outside_base"
            err = _error(await c.call_tool("plan", {"file": "x.yaml", "yaml": SWEEP}))
            assert err["error"] == "bad_argument" and "one of them" in err["what"]
            err = _error(await c.call_tool("plan", {"yaml": "groups: [1, 2"}))
            assert err["error"] == "bad_config" and err["where"] == "yaml"
            malformed = await c.call_tool("tasks", {"limit": "many"})
            assert malformed.is_error  # the SDK's own validation of the arguments
        async with _stdio(tmp_path, "--allow-write") as c:
            err = _error(await c.call_tool("submit", {"file": "foreign.yaml"}))
            assert err["error"] == "not_allowed" and "evil:boom" in err["what"]
            sent = await c.call_tool("submit", {"yaml": SWEEP, "wait": True})
            run_dir = sent.structured_content["folder"]
            err = _error(await c.call_tool("tasks", {"run": run_dir, "states": ["bogus"]}))
            assert err["error"] == "bad_argument" and "succeeded" in err["fix"]
            err = _error(await c.call_tool("tasks", {"run": run_dir, "limit": 0}))
            assert err["error"] == "bad_argument"
            err = _error(await c.call_tool("logs", {"run": run_dir, "task": "nope"}))
            assert err["error"] == "not_found"
            err = _error(await c.call_tool("result", {"run": run_dir, "task": "flaky"}))
            assert err["error"] == "not_finished"
        assert not (tmp_path / "pwned").exists()  # evil.py was never imported

    run(agent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_over_http_the_token_is_needed_and_the_tools_are_the_same(tmp_path: Path) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    port = _free_port()
    token = "t0ken-for-the-test"
    env = {**os.environ, "SHOAL_MCP_TOKEN": token, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["-m", "shoal.cli.main", "mcp", "--base", str(tmp_path), "--http", "--port", str(port)]
    server = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert f"127.0.0.1:{port}/mcp" in line and token in line, line
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx2.post(url, json={}, timeout=5)
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "the HTTP server did not answer"
                time.sleep(0.1)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
        wrong = httpx2.post(url, json={}, headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401

        async def agent() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as http,
                Client(streamable_http_client(url, http_client=http)) as c,
            ):
                planned = await c.call_tool("plan", {"yaml": SWEEP})
                assert planned.structured_content["tasks"] == 4
                refused = _error(await c.call_tool("submit", {"yaml": SWEEP}))
                assert refused["error"] == "read_only"

        run(agent)
    finally:
        server.terminate()
        server.wait(timeout=30)


LONG = """\
resources: {cpus: 1}
groups:
  slow:
    command: sleep {s}
    sweep: {s: [30, 30, 30, 30]}
"""


def test_an_agent_steers_a_live_run_explains_cancels_stops_and_reports(tmp_path: Path) -> None:
    """A live run of four 30 s tasks on one core: explain says why the second waits, cancel
    ends it, submit adds a task into the live run, stop ends the run (resumable), rerun
    queues a finished task again, and report writes the figures."""

    async def agent() -> None:
        async with _stdio(tmp_path, "--allow-write") as c:
            sent = (await c.call_tool("submit", {"yaml": LONG})).structured_content
            folder = sent["folder"]
            assert (tmp_path / folder / "shoal.db").exists()
            deadline = time.monotonic() + 60
            while True:  # until the first task runs
                st = (await c.call_tool("status", {"run": folder})).structured_content
                if st["counts"].get("running"):
                    break
                assert time.monotonic() < deadline, st
                await anyio.sleep(0.2)
            why = (await c.call_tool("explain", {"run": folder, "task": "1"})).structured_content
            assert any("core" in line or "wait" in line for line in why["lines"]), why
            gone = await c.call_tool("cancel", {"run": folder, "tasks": ["1"]})
            assert not gone.is_error and gone.structured_content["live"] is True, gone
            more = "groups:\n  late:\n    command: echo late\n"
            added = await c.call_tool("submit", {"yaml": more, "run": folder})
            assert not added.is_error and added.structured_content["live"] is True, added
            stopped = await c.call_tool("stop", {"run": folder, "now": True})
            assert not stopped.is_error, stopped
            done = (await c.call_tool("wait", {"run": folder, "timeout": 60})).structured_content
            assert done["waited"] == "ended" and done["state"] == "stopped", done
            assert done["counts"].get("cancelled") == 1 and done["total"] == 5, done
            rerun = await c.call_tool("rerun", {"run": folder, "tasks": ["1"]})
            assert rerun.is_error or rerun.structured_content["live"] is False
            rep = (await c.call_tool("report", {"run": folder})).structured_content
            assert Path(rep["html"]).is_file() and rep["figures"], rep
            assert all(Path(f).is_relative_to(tmp_path) for f in rep["figures"])

    run(agent)
