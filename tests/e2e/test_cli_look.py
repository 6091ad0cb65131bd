"""``shoal runs``, ``shoal result``, ``shoal explain`` and ``shoal stop``, through the real
command line: on finished runs (the ``project`` of test_cli.py), on a live run held open by a
gate file, and on a run whose driver was killed."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from shoal.errors import StoreError
from shoal.store.queries import Reader

from .test_cli import Project, project, run_dirs, shoal_cli  # noqa: F401  # the fixture

HELD = """
import os, time, shoal

@shoal.task
def quick(x):
    return {"x": x}

@shoal.task
def held(gate):
    print("waiting for the gate", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.05)
    print("through the gate")
    return "released"

@shoal.task
def after(values):
    return len(values)

with shoal.Workflow("held") as wf:
    q = quick(1)
    h = held(os.environ["GATE"])
    a = after([q.out, h.out])
    wide = quick.options(name="wide", cpus=2)(2).after(h)
wf.run(cpus=2, progress=False)
"""


def _wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


def _started(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    """A live run of HELD: ``quick`` done, ``held`` running until the gate file appears."""
    (tmp_path / "held.py").write_text(textwrap.dedent(HELD))
    gate = tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "held.py"],
        cwd=tmp_path,
        env={**os.environ, "GATE": str(gate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def running() -> bool:
        runs = run_dirs(tmp_path)
        if not runs:
            return False
        try:
            with Reader(runs[0]) as r:
                return r.find("held").state == "running" and r.find("quick").state == "succeeded"
        except StoreError:  # the directory is there, its tasks not yet
            return False

    _wait_for("the held task to start", running)
    return proc, gate, run_dirs(tmp_path)[0]


def test_runs_lists_every_run_with_its_life(project: Project, tmp_path: Path) -> None:  # noqa: F811
    p = shoal_cli(project.dir, "runs", "--json")
    assert p.returncode == 0, p.stderr
    found = {Path(r["dir"]).name: r for r in json.loads(p.stdout)}
    fine, demo = found[project.fine_run.name], found[project.demo_run.name]
    assert fine["life"] == demo["life"] == "finished"
    assert (fine["state"], demo["state"]) == ("succeeded", "failed")
    assert demo["counts"] == {"succeeded": 5, "failed": 1, "dep_failed": 1}
    assert fine["duration"] > 0 and fine["throughput"]["overall"] > 0
    text = shoal_cli(project.dir, "runs").stdout
    assert "finished     failed" in text and "6/7" in text, text  # succeeded or failed of all
    # deeper down, and bounded: a run two folders below is found, not with --depth 1
    nested = tmp_path / "campaign" / "batch"
    nested.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(project.fine_run), str(nested)], check=True)
    assert [
        Path(r["dir"]).name for r in json.loads(shoal_cli(tmp_path, "runs", "--json").stdout)
    ] == [project.fine_run.name]
    assert json.loads(shoal_cli(tmp_path, "runs", "--json", "--depth", "1").stdout) == []


def test_result_reads_without_touching_the_run(project: Project) -> None:  # noqa: F811
    db = project.demo_run / "shoal.db"
    before = (db.stat().st_mtime, (project.demo_run / "shoal.db-wal").exists())
    with Reader(project.demo_run) as r:
        story = len(r.story(3))
    p = shoal_cli(project.dir, "result", "3", "--json")  # the first total
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == 5  # 0 + 1 + 4
    failed = shoal_cli(project.dir, "result", "boom")
    assert failed.returncode == 1 and "RuntimeError: boom failed on 3" in failed.stderr
    assert shoal_cli(project.dir, "result", "-r", str(project.fine_run), "total").stdout == "14\n"
    assert (db.stat().st_mtime, (project.demo_run / "shoal.db-wal").exists()) == before
    with Reader(project.demo_run) as r:
        assert len(r.story(3)) == story
        assert "resumes" not in r.meta()


def test_explain_a_finished_run(project: Project) -> None:  # noqa: F811
    p = shoal_cli(project.dir, "explain", "boom")
    assert p.returncode == 0, p.stderr
    assert "it is not waiting: it failed" in p.stdout, p.stdout
    downstream = shoal_cli(project.dir, "explain", "-r", str(project.demo_run), "5").stdout
    assert "dep_failed" in downstream and "never ran" in downstream, downstream


def test_explain_and_stop_a_live_run(tmp_path: Path) -> None:
    proc, gate, rundir = _started(tmp_path)
    try:
        waiting = shoal_cli(tmp_path, "explain", "after").stdout
        assert "it waits for 1 of its 2 dependencies: #1 held (running)" in waiting, waiting
        running = shoal_cli(tmp_path, "explain", "held").stdout
        assert "running attempt 1 on node " in running and ", core" in running, running
        live = json.loads(shoal_cli(tmp_path, "runs", "--json").stdout)
        assert [r["life"] for r in live] == ["live"]
        stop = shoal_cli(tmp_path, "stop")
        assert stop.returncode == 0 and "the run stops" in stop.stdout, stop.stdout + stop.stderr
    finally:
        gate.touch()  # the held task finishes; nothing new starts
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err  # stopped as asked: resumable
    with Reader(rundir) as r:
        assert r.find("held").state == "succeeded"
        assert r.find("after").state in ("pending", "ready")  # never started
    assert json.loads(shoal_cli(tmp_path, "runs", "--json").stdout)[0]["life"] == "interrupted"
    again = shoal_cli(tmp_path, "stop")
    assert again.returncode == 2 and "nothing to stop" in again.stderr, again.stderr
    explained = shoal_cli(tmp_path, "explain", "after").stdout
    assert "the run is interrupted: nothing starts until it is resumed" in explained, explained


def test_a_killed_driver_makes_a_lost_run(tmp_path: Path) -> None:
    proc, gate, rundir = _started(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    gate.touch()
    row = json.loads(shoal_cli(tmp_path, "runs", "--json").stdout)[0]
    assert row["life"] == "lost" and row["state"] == "running"
    assert "lost" in shoal_cli(tmp_path, "runs").stdout
    explained = shoal_cli(tmp_path, "explain", "-r", str(rundir), "after").stdout
    assert f"the run is lost: nothing starts until it is resumed (shoal resume {rundir})" in (
        explained
    ), explained


def test_tasks_limit_must_be_positive_and_help_is_h(project: Project) -> None:  # noqa: F811
    for bad in ("0", "-3"):
        p = shoal_cli(project.dir, "tasks", "--limit", bad)
        assert p.returncode == 2 and "must be at least 1" in p.stderr, p.stderr
    assert (
        shoal_cli(project.dir, "tasks", "-r", str(project.fine_run), "--limit", "2").stdout.count(
            "\n"
        )
        == 2
    )
    assert "Usage: " in shoal_cli(project.dir, "-h").stdout
    assert "Usage: " in shoal_cli(project.dir, "explain", "-h").stdout


def test_logs_show_placements_in_words(project: Project) -> None:  # noqa: F811
    out = shoal_cli(project.dir, "logs", "total", "-r", str(project.fine_run)).stdout
    assert "on node " in out and ", core " in out, out
    assert "[[" not in out, out


@pytest.mark.parametrize("ref", ["nope", "999"])
def test_unknown_tasks_are_named(project: Project, ref: str) -> None:  # noqa: F811
    for cmd in ("explain", "result"):
        p = shoal_cli(project.dir, cmd, ref)
        assert p.returncode == 2 and ref in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_tasks_filters_sorts_and_pages(project: Project) -> None:  # noqa: F811
    def ids(*args: str) -> list[int]:
        p = shoal_cli(project.dir, "tasks", "-r", str(project.demo_run), "--json", *args)
        assert p.returncode == 0, p.stderr
        return [t["id"] for t in json.loads(p.stdout)]

    assert ids("--state", "failed,dep_failed") == [4, 5]
    assert ids("--state", "failed", "--state", "dep_failed") == [4, 5]
    assert ids("--name", "squ*") == [0, 1, 2]
    assert ids("--name", "squ*", "--sort", "-id", "--limit", "2") == [2, 1]
    assert ids("--since", "1d") == list(range(7))  # every task started within a day
    assert ids("--until", "1d") == []  # none before
    rows = json.loads(shoal_cli(project.dir, "tasks", "--json", "--sort", "-runtime").stdout)
    times = [t["runtime"] for t in rows if t["runtime"] is not None]
    assert times == sorted(times, reverse=True) and rows[0]["started"] is not None
    bad = shoal_cli(project.dir, "tasks", "--sort", "colour")
    assert bad.returncode == 2 and "cannot sort by 'colour'" in bad.stderr, bad.stderr
    text = shoal_cli(project.dir, "tasks", "--limit", "2")
    assert "(2 of 7 shown)" in text.stderr, text.stderr


class _Lines:
    """The lines a child prints, read by a thread as they come. (``select`` on a text pipe
    followed by ``readline`` misses lines: ``readline`` takes all that is waiting into
    Python's buffer, and ``select`` then waits for the pipe, which is empty. A loaded machine
    is where two lines arrive together.)"""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)  # the end

    def next(self, deadline: float, what: str) -> str:
        """The next line; fails with ``what`` and the lines so far at the deadline or the end."""
        try:
            line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"{what} in 60 s; it printed {self.seen}") from None
        assert line is not None, f"it ended first: {what}; it printed {self.seen}"
        self.seen.append(line)
        return line

    def rest(self, timeout: float) -> str:
        """All it printed after the lines taken, once it has ended."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"it did not end in {timeout} s: {self.seen}"
        out = []
        while (line := self.queue.get_nowait()) is not None:
            out.append(line)
        return "".join(out)


def test_logs_follow_and_status_watch_a_live_run(tmp_path: Path) -> None:
    """``logs --follow`` prints what the task writes as it comes and ends with it; ``status
    --watch`` shows the run again and again and ends when the run does."""
    proc, gate, _ = _started(tmp_path)
    cli = [sys.executable, "-m", "shoal.cli.main"]
    out = subprocess.PIPE
    follow = subprocess.Popen(
        [*cli, "logs", "held", "--follow"], cwd=tmp_path, stdout=out, text=True
    )
    watch = subprocess.Popen(
        [*cli, "status", "--watch", "--every", "0.2"], cwd=tmp_path, stdout=out, text=True
    )
    assert follow.stdout is not None and watch.stdout is not None
    followed, watched = _Lines(follow.stdout), _Lines(watch.stdout)
    try:
        deadline = time.monotonic() + 60
        first = ""
        while "[stdout]" not in first:  # the story comes first
            first = followed.next(deadline, "logs --follow printed nothing of the task's output")
        assert first.strip() == "[stdout] waiting for the gate"
        seen = 0
        while seen < 2:  # the watch shows the live run again and again
            line = watched.next(deadline, "status --watch did not show the live run twice")
            seen += line.startswith("run held: running")
        assert follow.poll() is None  # it goes on while the task runs
    finally:
        gate.touch()
    rest = followed.rest(60)
    assert "[stdout] through the gate" in rest and "ended: succeeded" in rest, rest
    shown = watched.rest(60)  # ends by itself with the run
    assert "run held: succeeded" in shown, shown
    assert follow.wait(60) == 0 and watch.wait(60) == 0
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    ended = shoal_cli(tmp_path, "logs", "held", "-f")  # an ended task: printed once, no wait
    assert ended.returncode == 0 and "through the gate" in ended.stdout, ended.stdout


FLAKY = """
import os, shoal

@shoal.task
def flaky(i, where):
    if not os.path.exists(os.path.join(where, f"fixed-{i}")):
        raise RuntimeError(f"not fixed yet: {i}")
    return i

with shoal.Workflow("flaky") as wf:
    bad = [flaky.options(tags=["flaky"])(i, os.getcwd()) for i in range(3)]
    good = [flaky.options(tags=["ok"], name="fine")(i, os.getcwd()) for i in (7, 8)]
for i in (7, 8):
    open(f"fixed-{i}", "w").close()
wf.run(cpus=2, progress=False)
"""


def test_rerun_in_bulk_by_tag_or_state(tmp_path: Path) -> None:
    """``shoal rerun --tag T`` (or ``--state S``) names every finished task of it in one
    request; on a stopped run it is carried out when the run resumes."""
    (tmp_path / "flaky.py").write_text(textwrap.dedent(FLAKY))
    first = shoal_cli(tmp_path, "run", "flaky.py")
    assert first.returncode == 1, first.stderr
    (rundir,) = run_dirs(tmp_path)
    refused = shoal_cli(tmp_path, "rerun", "--state", "running")
    assert refused.returncode == 2 and "a rerun takes finished tasks" in refused.stderr
    none = shoal_cli(tmp_path, "rerun", "--tag", "nothing-has-it")
    assert none.returncode == 2 and "no finished task of tag nothing-has-it" in none.stderr
    for i in range(3):
        (tmp_path / f"fixed-{i}").touch()
    queued = shoal_cli(tmp_path, "rerun", "--tag", "flaky")
    assert queued.returncode == 0 and "carried out when the run resumes" in queued.stdout
    resumed = shoal_cli(tmp_path, "resume", str(rundir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with Reader(rundir) as r:
        rows = r.tasks()
        assert {t.state for t in rows} == {"succeeded"}
        assert sorted(t.attempts for t in rows if "flaky" in t.tags) == [2, 2, 2]
        assert [t.attempts for t in rows if "ok" in t.tags] == [1, 1]  # not run again


HOSTILE = """
import shoal

@shoal.task
def step(*xs):
    return len(xs)

with shoal.Workflow("hostile") as wf:
    a = step.options(name='<img src=x onerror=alert(1)> "quoted"')()
    b = [step(a.out) for _ in range(3)]
    c = step.options(name="last")(*[x.out for x in b])
wf.run(cpus=2, progress=False)
"""


def test_graph_as_mermaid_dot_and_png(tmp_path: Path) -> None:
    """Each task with its state and its edges; names escaped for each format; grouped by
    name on request (or above 200 tasks); a PNG picture."""
    (tmp_path / "hostile.py").write_text(textwrap.dedent(HOSTILE))
    assert shoal_cli(tmp_path, "run", "hostile.py").returncode == 0
    mer = shoal_cli(tmp_path, "graph").stdout
    assert mer.startswith("flowchart TD\n")
    assert 't0["#0 &lt;img src=x onerror=alert(1)&gt; &quot;quoted&quot;"]:::succeeded' in mer
    assert "<img" not in mer
    assert all(f"t0 --> t{i}" in mer and f"t{i} --> t4" in mer for i in (1, 2, 3)), mer
    dot = shoal_cli(tmp_path, "graph", "--format", "dot").stdout
    assert 't0 [label="#0 <img src=x onerror=alert(1)> \\"quoted\\"", fillcolor=' in dot, dot
    grouped = shoal_cli(tmp_path, "graph", "--group").stdout
    assert '["step<br/>3 tasks: 3 succeeded"]:::succeeded' in grouped, grouped
    assert "-->|3|" in grouped, grouped
    png = shoal_cli(tmp_path, "graph", "--format", "png", "-o", str(tmp_path / "g.png"))
    assert png.returncode == 0, png.stderr
    data = (tmp_path / "g.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_a_script_task_traceback_names_the_script_and_line(project: Project) -> None:  # noqa: F811
    """A task function of a script is sent by value; its traceback still says where it is
    (cloudpickle alone says ``<dynamic-code>``)."""
    out = shoal_cli(project.dir, "logs", "boom").stdout
    script = project.dir / "demo.py"
    line = script.read_text().splitlines().index('    raise RuntimeError(f"boom failed on {x}")')
    assert f'File "{script}", line {line + 1}, in boom' in out, out
    assert "<dynamic-code>" not in out


EVIL = """
import shoal

@shoal.task
def bad():
    raise ValueError("<script>alert('reason')</script>")

with shoal.Workflow("evil") as wf:
    bad.options(name="<img src=x onerror=alert(1)>")()
wf.run(progress=False)
"""


def test_report_of_a_finished_run_is_self_contained_and_escaped(tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text(textwrap.dedent(EVIL))
    assert shoal_cli(tmp_path, "run", "evil.py").returncode == 1
    (rundir,) = run_dirs(tmp_path)
    p = shoal_cli(tmp_path, "report")
    assert p.returncode == 0, p.stderr
    page = rundir / "report" / "report.html"
    assert p.stdout.startswith(str(page))
    text = page.read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img src=x" not in text
    assert "&lt;script&gt;" in text and "<script" not in text
    assert "efficiency (busy core-seconds / capacity)" in text
    images = text.count('src="data:image/png;base64,')
    assert images == 6 and "http" not in text.replace("http-equiv", "")  # opens offline
    for name in ("utilization", "gantt", "runtimes", "waits", "failures", "throughput"):
        assert (rundir / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_live_run(tmp_path: Path) -> None:
    proc, gate, _ = _started(tmp_path)
    try:
        out = tmp_path / "live.html"
        p = shoal_cli(tmp_path, "report", "-o", str(out))
        assert p.returncode == 0, p.stderr
        text = out.read_text()
        assert "<th>life</th><td>live</td>" in text and "<th>attempts</th><td>2</td>" in text
    finally:
        gate.touch()
    proc.communicate(timeout=60)
