"""The dashboard's JSON API (Starlette's test client, no browser): what each endpoint answers
on a finished run with failures, its guards (the token, the run's name, a file by task id),
and run directories that are crashed, mid-write, or from an older shoal."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard extra (starlette) is not installed")
pytest.importorskip("httpx", reason="starlette's test client needs httpx")

from starlette.testclient import TestClient

import shoal
from shoal.dashboard.app import Dashboard, create_app, loopback
from shoal.store.queries import Reader

EVIL = "<img src=x onerror=alert(1)>"
TOKEN = "s3cret-token"
HOSTS = ("testserver", "127.0.0.1")  # the test client says "testserver"


def relax(i: int) -> dict[str, float]:
    print(f"relaxing structure {i}")
    if i % 5 == 3:
        raise ValueError(f"structure {i} exploded")
    return {"energy": -1.5 * i}


def gather(*energies: Any) -> int:
    return len(energies)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one finished run: 12 relaxations (2 fail: 3 and 8), a task depending on two of
    them (tolerating their failure) and one with a hostile name."""
    folder = tmp_path_factory.mktemp("runs")
    r = shoal.task(relax, tags=["md"])
    g = shoal.task(gather, name=EVIL, tags=["<b>t</b>"], tolerate=True)
    with shoal.Workflow("dash") as wf:
        rs = [r(i) for i in range(12)]
        g(rs[0].out, rs[3].out)
    wf.run(cpus=2, base=folder, progress=False)
    return folder


@pytest.fixture()
def client(base: Path) -> TestClient:
    return TestClient(create_app(Dashboard(base, TOKEN, hosts=HOSTS)))


def _key(client: TestClient) -> str:
    runs = client.get("/api/runs").json()["runs"]
    assert len(runs) == 1
    return str(runs[0]["key"])


def test_the_runs_page_lists_runs_with_life_counts_and_throughput(client: TestClient) -> None:
    runs = client.get("/api/runs").json()["runs"]
    (run,) = runs
    assert run["life"] == "finished" and run["state"] == "failed"
    assert run["counts"] == {"succeeded": 11, "failed": 2}  # the tolerant task succeeded
    assert run["total"] == 13 and run["duration"] > 0 and run["throughput"]["overall"] > 0


def test_the_run_page_puts_failures_first_with_their_reasons(client: TestClient) -> None:
    st = client.get("/api/run", params={"run": _key(client)}).json()
    assert [f["id"] for f in st["failures"]] == [3, 8]
    assert st["failures"][0]["reason"] == "ValueError: structure 3 exploded"
    assert st["nodes"] == [{"name": st["nodes"][0]["name"], "cores": 2, "gpus": 0}]


def test_the_charts_add_up_to_the_store(client: TestClient, base: Path) -> None:
    c = client.get("/api/charts", params={"run": _key(client)}).json()
    assert sum(c["succeeded"]) == 11 and sum(c["failed"]) == 2
    assert c["capacity"] == {"cores": 2, "gpus": 0} and 0 < c["efficiency"] <= 1
    assert max(c["cores"]) <= 2 + 1e-9
    assert len(c["gantt"]["bars"]) == c["attempts"] == 13 and not c["gantt"]["sampled"]
    md = next(t for t in c["tags"] if t["tag"] == "md")
    assert (md["attempts"], md["succeeded"], md["failed"]) == (12, 10, 2)


def test_the_task_table_filters_sorts_and_pages_on_the_server(client: TestClient) -> None:
    key = _key(client)
    page = client.get("/api/tasks", params={"run": key, "state": "failed"}).json()
    assert [r["id"] for r in page["rows"]] == [3, 8]
    assert all(r["state"] == "failed" for r in page["rows"])
    two = client.get("/api/tasks", params={"run": key, "limit": 2, "offset": 4}).json()
    assert [r["id"] for r in two["rows"]] == [4, 5]
    text = client.get("/api/tasks", params={"run": key, "text": "exploded"}).json()
    assert {r["id"] for r in text["rows"]} == {3, 8}
    tag = client.get("/api/tasks", params={"run": key, "tag": "<b>t</b>"}).json()
    assert [r["name"] for r in tag["rows"]] == [EVIL]
    slow = client.get("/api/tasks", params={"run": key, "sort": "-runtime", "limit": 3}).json()
    times = [r["runtime"] for r in slow["rows"]]
    assert times == sorted(times, reverse=True)
    count = client.get("/api/count", params={"run": key, "name": "relax"}).json()
    assert count == {"total": 12}
    assert client.get("/api/count", params={"run": key, "state": "failed"}).json()["total"] == 2
    bad = client.get("/api/tasks", params={"run": key, "sort": "colour"})
    assert bad.status_code == 400 and "sort by one of" in bad.json()["error"]
    assert client.get("/api/tasks", params={"run": key, "limit": "x"}).status_code == 400


def test_a_task_page_tells_its_story_attempts_links_and_result(client: TestClient) -> None:
    key = _key(client)
    t = client.get("/api/task", params={"run": key, "id": 12}).json()
    assert t["task"]["name"] == EVIL and t["task"]["state"] == "succeeded"
    assert [d["id"] for d in t["deps"]] == [0, 3] and t["deps"][1]["state"] == "failed"
    assert t["result"]["preview"] == "2" and t["result"]["type"] == "builtins.int"
    assert t["attempts"][0]["where"].startswith("node ") and "core" in t["attempts"][0]["where"]
    assert [s["new"] for s in t["story"]][-1] == "succeeded"
    up = client.get("/api/task", params={"run": key, "id": 3}).json()
    assert [d["id"] for d in up["dependents"]] == [12]
    assert set(up["logs"]) >= {"stdout", "traceback"}
    assert up["explain"][0].startswith("task #3 relax: failed")


def test_logs_are_served_by_task_id_and_stream_name_only(client: TestClient) -> None:
    key = _key(client)
    out = client.get("/api/log", params={"run": key, "id": 3, "stream": "stdout"}).json()
    assert out["text"] == "relaxing structure 3\n" and out["ended"]
    tb = client.get("/api/log", params={"run": key, "id": 3, "stream": "traceback"}).json()
    assert "ValueError: structure 3 exploded" in tb["text"] and "test_api.py" in tb["text"]
    again = client.get(
        "/api/log", params={"run": key, "id": 3, "stream": "stdout", "offset": out["offset"]}
    ).json()
    assert again["text"] == ""
    for stream in ("../../shoal.db", "/etc/passwd", "stdin"):
        r = client.get("/api/log", params={"run": key, "id": 3, "stream": stream})
        assert r.status_code == 404 and "ask for one of" in r.json()["error"]
    assert (
        client.get("/api/log", params={"run": key, "id": 999, "stream": "stdout"}).status_code
        == 404
    )


def test_a_run_is_named_among_the_runs_found_never_as_a_path(client: TestClient) -> None:
    for name in ("..", "../..", "/etc", "/", "dash/../../x"):
        r = client.get("/api/run", params={"run": name})
        assert r.status_code == 404 and "no run" in r.json()["error"]


def test_the_graph_has_boxes_by_state_and_edges(client: TestClient) -> None:
    g = client.get("/api/graph", params={"run": _key(client)}).json()
    assert not g["grouped"] and g["tasks"] == 13
    assert sorted(e[:2] for e in g["edges"]) == [["t0", "t12"], ["t3", "t12"]]
    by = {b["key"]: b for b in g["boxes"]}
    assert by["t3"]["state"] == "failed" and by["t12"]["level"] == 1
    grouped = client.get("/api/graph", params={"run": _key(client), "group": "name"}).json()
    assert grouped["grouped"] and len(grouped["boxes"]) == 2
    failed = client.get("/api/graph", params={"run": _key(client), "state": "failed"}).json()
    assert sorted(b["task"] for b in failed["boxes"]) == [3, 8] and failed["edges"] == []
    tagged = client.get("/api/graph", params={"run": _key(client), "tag": "md"}).json()
    assert tagged["tasks"] == 12 and tagged["edges"] == []  # the tagged t task is left out


def test_actions_need_the_token_in_a_header_of_a_json_post(client: TestClient, base: Path) -> None:
    key = _key(client)
    body = {"run": key, "action": "retry", "tasks": [3]}
    refused = client.post("/api/action", json=body)
    assert refused.status_code == 403 and "token" in refused.json()["error"]
    wrong = client.post("/api/action", json=body, headers={"X-Shoal-Token": "guess"})
    assert wrong.status_code == 403
    client.cookies.set("X-Shoal-Token", TOKEN)  # a cookie proves nothing
    assert client.post("/api/action", json=body).status_code == 403
    client.cookies.clear()
    form = client.post(
        "/api/action",
        content=json.dumps(body),
        headers={"X-Shoal-Token": TOKEN, "Content-Type": "text/plain"},
    )
    assert form.status_code == 415  # what a cross-site form could send
    assert client.get("/api/action").status_code == 405
    with Reader(next(base.iterdir())) as r:
        before = r.conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    assert before == 0  # nothing reached the run


def test_an_action_with_the_token_is_checked_then_queued_as_the_cli_does(
    tmp_path: Path, base: Path
) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(base, copy)
    c = TestClient(create_app(Dashboard(copy, TOKEN, hosts=HOSTS)))
    key = _key(c)
    h = {"X-Shoal-Token": TOKEN}
    no = c.post("/api/action", json={"run": key, "action": "retry", "tasks": [0]}, headers=h)
    assert no.status_code == 400 and "only failed or cancelled tasks" in no.json()["error"]
    ok = c.post("/api/action", json={"run": key, "action": "retry", "tasks": [3]}, headers=h)
    assert ok.status_code == 200 and not ok.json()["live"]
    assert "carried out" in ok.json()["answer"] or "resume" in ok.json()["answer"]
    run = next(copy.iterdir())
    with Reader(run) as r:
        rows = r.conn.execute("SELECT kind, payload FROM requests").fetchall()
    assert len(rows) == 1 and rows[0][0] == "retry"
    shoal.resume(run, progress=False)
    with Reader(run) as r:
        assert r.find(3).attempts == 2  # the resume carried the retry out


def test_off_loopback_every_request_needs_the_token(base: Path) -> None:
    c = TestClient(create_app(Dashboard(base, TOKEN, open_reads=False, hosts=HOSTS)))
    assert c.get("/api/runs").status_code == 401
    assert c.get("/api/runs", headers={"X-Shoal-Token": TOKEN}).status_code == 200
    assert c.get("/").status_code == 200  # the page itself holds no data
    assert loopback("127.0.0.1") and loopback("127.0.0.5") and loopback("::1")
    assert not loopback("0.0.0.0") and not loopback("10.1.2.3")


def test_pages_allow_no_script_or_style_from_elsewhere(client: TestClient) -> None:
    page = client.get("/run")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from a CDN
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


def _copy_run(base: Path, tmp: Path) -> Path:
    dest = tmp / "runs" / "one"
    shutil.copytree(next(base.iterdir()), dest)
    return dest


def test_a_crashed_run_shows_its_reason(tmp_path: Path, base: Path) -> None:
    run = _copy_run(base, tmp_path)
    with sqlite3.connect(run / "shoal.db") as db:
        db.execute("UPDATE meta SET value=? WHERE key='state'", (json.dumps("crashed"),))
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('crash_reason', ?)",
            (json.dumps("OSError: disk full"),),
        )
    c = TestClient(create_app(Dashboard(tmp_path / "runs", TOKEN, hosts=HOSTS)))
    st = c.get("/api/run", params={"run": "one"}).json()
    assert st["life"] == "crashed" and st["crash_reason"] == "OSError: disk full"
    assert st["counts"] == {"succeeded": 11, "failed": 2}  # counted, not taken from meta


def test_a_run_mid_write_is_read_from_its_wal_and_a_torn_status_file(
    tmp_path: Path, base: Path
) -> None:
    run = _copy_run(base, tmp_path)
    writer = sqlite3.connect(run / "shoal.db", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("UPDATE meta SET value=? WHERE key='state'", (json.dumps("running"),))
    writer.execute("UPDATE meta SET value=? WHERE key='pid'", (json.dumps(1),))  # init: alive
    writer.execute("BEGIN")
    writer.execute("UPDATE tasks SET state='running' WHERE id=0")  # uncommitted: not seen
    (run / "status.json").write_text('{"counts": {"succeeded": 4')  # torn mid-write
    try:
        c = TestClient(create_app(Dashboard(tmp_path / "runs", TOKEN, hosts=HOSTS)))
        st = c.get("/api/run", params={"run": "one"}).json()
        assert st["life"] == "live" and st["counts"]["succeeded"] == 11
        assert c.get("/api/task", params={"run": "one", "id": 0}).json()["task"]["state"] == (
            "succeeded"
        )
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_run_from_an_older_shoal_is_listed_as_unreadable_not_a_broken_page(
    tmp_path: Path,
) -> None:
    old = tmp_path / "runs" / "old-20250101"
    old.mkdir(parents=True)
    with sqlite3.connect(old / "shoal.db") as db:  # shoal 0.1's tables: no origin, no alias
        db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('name', '\"old\"'), ('state', '\"succeeded\"')")
        db.execute(
            "CREATE TABLE tasks(id INTEGER PRIMARY KEY, name TEXT, state TEXT, deps TEXT, "
            "tags TEXT)"
        )
    c = TestClient(create_app(Dashboard(tmp_path / "runs", TOKEN, hosts=HOSTS)))
    (run,) = c.get("/api/runs").json()["runs"]
    assert run["life"] == "finished" and run["run"] == "old"
    page = c.get("/api/tasks", params={"run": "old-20250101"})
    assert page.status_code == 400 and "cannot read" in page.json()["error"]


def test_shoal_dashboard_refuses_a_public_address_without_a_token(base: Path) -> None:
    from click.testing import CliRunner

    from shoal.cli.main import main

    out = CliRunner().invoke(main, ["dashboard", str(base), "--host", "0.0.0.0"], env={})
    assert out.exit_code == 2 and "give --token" in out.output


def test_shoal_dashboard_says_when_its_port_is_taken(base: Path) -> None:
    import socket

    from click.testing import CliRunner

    from shoal.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = CliRunner().invoke(main, ["dashboard", str(base), "--port", str(port)])
    assert out.exit_code == 2 and "--port 0" in out.output


def test_a_request_naming_another_host_is_refused(base: Path) -> None:
    """DNS rebinding: a site whose name now points at 127.0.0.1 still sends its own name."""
    c = TestClient(create_app(Dashboard(base, TOKEN)), base_url="http://127.0.0.1:8765")
    assert c.get("/api/runs").status_code == 200
    assert c.get("/api/runs", headers={"Host": "localhost:8765"}).status_code == 200
    assert c.get("/api/runs", headers={"Host": "evil.example:8765"}).status_code == 400


def test_a_dashboard_of_one_run_directory(base: Path) -> None:
    run = next(base.iterdir())
    c = TestClient(create_app(Dashboard(run, TOKEN, hosts=HOSTS)))
    (only,) = c.get("/api/runs").json()["runs"]
    assert only["key"] == "."
    assert c.get("/api/run", params={"run": "."}).json()["total"] == 13
    assert c.get("/api/run").json()["total"] == 13  # the only run needs no name


def test_a_live_run_shows_its_deadline_and_allocation_end(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver reports the allocation's end (SHOAL_END_TIME, or Slurm's
    SLURM_JOB_END_TIME) in status.json; the run page shows it while the run is live."""
    monkeypatch.setenv("SHOAL_END_TIME", "2000000000")
    with shoal.Workflow("alloc") as wf:
        shoal.task(relax)(1)
    run = wf.run(cpus=1, base=tmp_path / "runs", progress=False)
    status = json.loads((Path(run.dir) / "status.json").read_text())
    assert status["allocation_end"] == 2e9 and status["deadline"] is None
    with sqlite3.connect(Path(run.dir) / "shoal.db") as db:  # as if its driver still ran
        db.execute("UPDATE meta SET value=? WHERE key='state'", (json.dumps("running"),))
        db.execute("UPDATE meta SET value=? WHERE key='pid'", (json.dumps(1),))
    c = TestClient(create_app(Dashboard(tmp_path / "runs", TOKEN, hosts=HOSTS)))
    st = c.get("/api/run").json()
    assert st["life"] == "live" and st["allocation_end"] == 2e9 and st["now"] < 2e9


def test_the_newest_runs_charts_are_read_before_their_first_visit(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoal.dashboard import data

    cat, charts = data.Catalog(base), data.Charts()
    data.warm(cat, charts)
    run = next(iter(cat.keys().values()))

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the charts were read again on the first visit")

    monkeypatch.setattr(data, "series", no_read)
    st = cat.summary(run)
    assert charts.get(run, st["life"], st["ended"])["attempts"] == 13
