"""``shoal status`` shows the statistics of each tag and the rules of a run, as text and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import shoal

    @shoal.task
    def relax(a):
        return {"energy": -3.5 - 0.01 * a}

    with shoal.Workflow("scan", track={"energy": "energy"}) as wf:
        for a in range(8):
            relax.options(tags="cu")(a)

    @wf.on("task-succeeded", tags="cu")
    def note(event, ctl):
        ctl.memory["last"] = event.result["energy"]

    @wf.on("metric", tags="cu", when="count(energy) >= 4", on_error="log")
    def broken(event, ctl):
        raise ValueError("a rule bug")

    wf.run()
    """
)


def shoal_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_status_shows_groups_and_rules(tmp_path: Path) -> None:
    (tmp_path / "scan.py").write_text(SCRIPT)
    done = shoal_cli("run", "scan.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = shoal_cli("status", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "groups (from status.json):" in text
    assert "tag cu: succeeded 8" in text
    assert "energy" in text and "min -3.57" in text and "max -3.5\n" in text
    assert "note (task-succeeded): 8 calls, 0 errors" in text
    assert "broken (metric): 1 calls, 1 errors" in text
    assert "last error: ValueError: a rule bug" in text
    data = json.loads(shoal_cli("status", "--json", cwd=tmp_path).stdout)
    assert data["groups"]["cu"]["fields"]["energy"]["count"] == 8
    assert {r["rule"] for r in data["rules"]} == {"note", "broken"}
