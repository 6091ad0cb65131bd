"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
served by ``shoal dashboard`` as a user starts it: the runs page, a live run updating as its
tasks finish, a running task's output followed live, filtering a large task table, an action
refused without the token and carried out with it, and a hostile task name shown as text.

Each page's screenshot is kept in ``$SHOAL_ARTIFACTS/dashboard`` (default
``/tmp/shoal-artifacts/dashboard``). CI (``.ci/run``) installs chromium and sets
``SHOAL_NEED_BROWSER=1``, so that there a missing browser fails instead of skipping."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.store.queries import Reader

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "<img src=x onerror=alert(1)>"
TOKEN = "browser-test-token"
WAIT = 60_000  # ms: generous, so that a loaded machine is slow, not failing
ARTIFACTS = Path(os.environ.get("SHOAL_ARTIFACTS", "/tmp/shoal-artifacts")) / "dashboard"


def _need(what: str) -> None:
    if os.environ.get("SHOAL_NEED_BROWSER"):
        pytest.fail(f"{what}, and SHOAL_NEED_BROWSER is set (CI): .ci/run installs it")
    pytest.skip(f"{what}: apt-get install chromium; pip install playwright")


try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra has it
    sync_playwright = None

pytest.importorskip("starlette", reason="the dashboard extra (starlette) is not installed")

LIVE = """
import os, sys, time, shoal

gate = sys.argv[1]

@shoal.task(tags=["quick"])
def quick(i):
    return i

@shoal.task(tags=["gated"])
def gated(i):
    while not os.path.exists(gate):
        time.sleep(0.05)
    return i

@shoal.task
def talker():
    k = 0
    while not os.path.exists(gate):
        print(f"tick {k}", flush=True)
        k += 1
        time.sleep(0.2)
    return k

@shoal.task
def victim():
    while True:
        time.sleep(0.1)

with shoal.Workflow("live") as wf:
    for i in range(10):
        quick(i)
    talker()
    victim()
    for i in range(4):
        gated(i)
wf.run(cpus=8, base=sys.argv[2], progress=False)
"""


def noisy(i: int) -> int:
    if i % 250 == 7:
        raise RuntimeError(f"sample {i} diverged")
    return i


def hostile(x: int) -> str:
    print("<script>alert(2)</script>")
    return "<i>x</i>"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A base folder with a finished run of 3,000 tasks (a hostile one among them) and a
    live run held open by a gate file; ``shoal dashboard`` serving it."""
    if CHROMIUM is None:
        _need("no chromium on this machine")
    if sync_playwright is None:
        _need("playwright is not installed")
    base = tmp_path_factory.mktemp("dash")
    n = shoal.task(noisy, tags=["scan"])
    h = shoal.task(hostile, name=EVIL, tags=["<b>t</b>"])
    with shoal.Workflow("big") as wf:
        first = [n(i) for i in range(3000)]
        h(first[0].out)
    wf.run(cpus=2, base=base / "finished", progress=False)
    gate = base / "gate"
    script = base / "live.py"
    script.write_text(textwrap.dedent(LIVE))
    live = subprocess.Popen(
        [sys.executable, str(script), str(gate), str(base / "live")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal.cli.main",
            "dashboard",
            str(base),
            "--port",
            "0",
            "--token",
            TOKEN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = _link(server)
        _until(lambda: _live_running(base / "live") >= 3, "the live run to start its tasks")
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            yield {"url": url, "base": base, "gate": gate, "browser": browser, "live": live}
            browser.close()
    finally:
        gate.touch()
        server.terminate()
        server.wait(30)
        live.kill()
        live.wait(30)


def _link(server: subprocess.Popen[str]) -> str:
    """The address ``shoal dashboard`` printed (without its token: tests give it or not)."""
    assert server.stdout is not None
    lines = []
    while True:
        line = server.stdout.readline()
        assert line, f"shoal dashboard exited: {''.join(lines)}"
        lines.append(line)
        found = re.search(r"open: (http://127\.0\.0\.1:\d+)/#token=(\S+)", line)
        if found:
            assert found[2] == TOKEN
            return found[1]


def _live_running(folder: Path) -> int:
    runs = list(folder.glob("live-*/status.json")) if folder.exists() else []
    if not runs:
        return 0
    import json

    try:
        return int(json.loads(runs[0].read_text())["counts"]["running"])
    except (OSError, ValueError, KeyError):
        return 0


def _until(check: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


def _key(world: dict[str, Any], name: str) -> str:
    folder = next((world["base"] / name).glob(f"{'live' if name == 'live' else 'big'}-*"))
    return f"{name}/{folder.name}"


def _page(world: dict[str, Any], token: bool = False) -> Page:
    ctx = world["browser"].new_context(viewport={"width": 1300, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(WAIT)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]
    page.on("dialog", lambda d: page.errors.append(f"dialog: {d.message}"))  # type: ignore[attr-defined]
    if token:  # the link printed at start, as a user opens it
        page.goto(f"{world['url']}/#token={TOKEN}")
    return page


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_runs_page_lists_every_run_with_its_life(world: dict[str, Any]) -> None:
    page = _page(world)
    page.goto(world["url"] + "/")
    rows = page.locator("#runs tr[data-run]")
    # the live run shows within seconds of its folder appearing, without a reload
    expect(rows).to_have_count(2, timeout=WAIT)
    text = page.locator("#runs").inner_text()
    assert "live" in text and "finished" in text and "3001" in text
    _shot(page, "runs")
    assert not page.errors  # type: ignore[attr-defined]


def _follows_output(world: dict[str, Any]) -> None:
    key = _key(world, "live")
    with Reader(world["base"] / key) as r:
        talker = r.find("talker").id
    page = _page(world)
    page.goto(f"{world['url']}/task?run={key}&id={talker}")
    log = page.locator("#log-stdout")
    expect(log).to_contain_text("tick 2", timeout=WAIT)
    seen = log.text_content() or ""
    last = max(int(x) for x in re.findall(r"tick (\d+)", seen))
    # more lines arrive without reloading the page
    expect(log).to_contain_text(f"tick {last + 3}", timeout=WAIT)
    assert "running" in page.locator("h1").inner_text()
    _shot(page, "task-following")


def _acts_with_the_token_only(world: dict[str, Any]) -> None:
    key = _key(world, "live")
    run = world["base"] / key
    with Reader(run) as r:
        victim = r.find("victim").id
    page = _page(world)
    page.on("dialog", lambda d: d.accept())
    page.goto(f"{world['url']}/task?run={key}&id={victim}")
    page.click("button[data-action=cancel]")
    expect(page.locator("#toast")).to_contain_text("token", timeout=WAIT)
    with Reader(run) as r:
        assert r.find(victim).state == "running"  # nothing reached the run
    _shot(page, "action-refused")
    page.goto(f"{world['url']}/#token={TOKEN}")  # the printed link keeps the token
    page.goto(f"{world['url']}/task?run={key}&id={victim}")
    page.click("button[data-action=cancel]")
    expect(page.locator("#toast")).to_contain_text("request", timeout=WAIT)

    def cancelled() -> bool:
        with Reader(run) as r:
            return r.find(victim).state == "cancelled"

    _until(cancelled, "the driver to cancel the task")
    _shot(page, "action-done")


def _updates_as_tasks_finish(world: dict[str, Any]) -> None:
    key = _key(world, "live")
    page = _page(world)
    page.goto(f"{world['url']}/run?run={key}")
    page.wait_for_selector("#counts [data-state=succeeded]")
    before = int(page.locator("#counts [data-state=succeeded] b").inner_text())
    page.wait_for_selector("#utilization svg")
    _shot(page, "run-live")
    world["gate"].touch()  # the gated tasks and the talker finish now
    tile = page.locator("#counts [data-state=succeeded] b")
    _until(lambda: int(tile.inner_text()) >= before + 5, "the counts to go up by themselves")
    _shot(page, "run-updated")
    assert not page.errors  # type: ignore[attr-defined]


def test_a_live_run_in_the_browser(world: dict[str, Any]) -> None:
    """In this order, on the live run: a running task's output is followed as it comes; a
    cancel is refused without the token and done with it; then the gate opens, and the run
    page's counts go up without a reload."""
    _follows_output(world)
    _acts_with_the_token_only(world)
    _updates_as_tasks_finish(world)


def test_a_large_task_table_is_filtered_on_the_server(world: dict[str, Any]) -> None:
    key = _key(world, "finished")
    page = _page(world)
    page.goto(f"{world['url']}/tasks?run={key}")
    page.wait_for_selector("#tasks tr[data-task]")
    assert page.locator("#tasks tr[data-task]").count() == 50
    expect(page.locator("#total")).to_have_text("3001", timeout=WAIT)
    page.fill("input[name=state]", "failed")
    page.fill("input[name=text]", "diverged")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*state=failed.*"))
    expect(page.locator("#total")).to_have_text("12", timeout=WAIT)
    rows = page.locator("#tasks tr[data-task]")
    assert rows.count() == 12
    assert all("diverged" in rows.nth(i).inner_text() for i in range(12))
    _shot(page, "tasks-filtered")


def test_a_hostile_task_name_shows_as_text(world: dict[str, Any]) -> None:
    key = _key(world, "finished")
    with Reader(world["base"] / key) as r:
        evil = r.find(EVIL).id
    page = _page(world)
    page.goto(f"{world['url']}/task?run={key}&id={evil}")
    page.wait_for_selector("#log-stdout:not([hidden])")
    assert EVIL in page.locator("h1").inner_text()
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    assert "<script>alert(2)</script>" in (page.locator("#log-stdout").text_content() or "")
    page.goto(f"{world['url']}/tasks?run={key}&tag=<b>t</b>")
    page.wait_for_selector("#tasks tr[data-task]")
    assert page.locator("main b").filter(has_text="t").count() == 0
    page.goto(f"{world['url']}/graph?run={key}")
    page.wait_for_selector("#dag")
    _shot(page, "graph-grouped")
    assert not page.errors  # type: ignore[attr-defined]  # no alert() ran
