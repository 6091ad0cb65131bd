"""Remote runs over SSH, against the OpenSSH server on 127.0.0.1 (tests/infra/sshd-local.sh)
and the machine's Slurm, with shoal installed for the server's user (the tests' fixture
does that: run ``pytest tests/remote`` once first).

1. ``shoal remote status RUN`` with a live master connection, against a bare
   ``ssh HOST true`` (a new connection each time), alternated ``--repeats`` times
   (target: within 1.5x).
2. From ``shoal remote submit`` to the first task running, through Slurm (the attempt's
   start time in the run's store against the submission's start, one clock).
3. The gap between two allocations of a chain: a link's end to the next link's start, as
   chain.log records them (Slurm, 20 s allocations).

    python bench/remote.py [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import common

DIR = Path(os.environ.get("SSHD_LOCAL_DIR", "/tmp/sshd-local"))
PORT = int(os.environ.get("SSHD_LOCAL_PORT", "2222"))
USER = os.environ.get("SSHD_LOCAL_USER", "cluster")
TARGET = 1.5

FLOW = """
import time, shoal

@shoal.task
def step(i):
    time.sleep(STEP)
    return i

with shoal.Workflow("bench") as wf:
    for i in range(NUMBER):
        step(i)
wf.run(cpus=2, progress=False)
"""


def shoal_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], capture_output=True, text=True, env=env
    )


def setup(cfg: Path) -> tuple[dict[str, str], list[str]]:
    """A host record for the server (slurm), and the bare ssh command to compare with."""
    known = cfg / "known_hosts"
    key = cfg / "key"
    cfg.mkdir(parents=True, exist_ok=True)
    hostkey = (DIR / "hostkey.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{PORT} {hostkey[0]} {hostkey[1]}\n")
    key.write_bytes((DIR / "userkey").read_bytes())
    key.chmod(0o600)
    env = {**os.environ, "SHOAL_CONFIG_DIR": str(cfg)}
    out = shoal_cli(
        "host", "add", "bench", "--ssh", f"{USER}@127.0.0.1", "--port", str(PORT), "-i",
        str(key), "--known-hosts", str(known), "--batch", "slurm", "--workdir", "~/bench",
        "--pre-run", "source ~/venv/bin/activate", "--replace", env=env,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"shoal host add failed: {out.stderr}")
    bare = ["ssh", "-p", str(PORT), "-i", str(key), "-o", f"UserKnownHostsFile={known}"]
    bare += ["-o", "ControlPath=none", "-o", "BatchMode=yes", f"{USER}@127.0.0.1", "true"]
    return env, bare


def submit(env: dict[str, str], folder: Path, number: int, step: float, *extra: str) -> str:
    script = folder / "flow.py"
    script.write_text(
        textwrap.dedent(FLOW).replace("NUMBER", str(number)).replace("STEP", str(step))
    )
    out = shoal_cli("remote", "submit", str(script), "--to", "bench", *extra, env=env)
    if out.returncode != 0:
        raise SystemExit(f"shoal remote submit failed: {out.stdout}{out.stderr}")
    return out.stdout.split()[2].rstrip(":")


def wait(env: dict[str, str], run: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = json.loads(shoal_cli("remote", "list", "--json", env=env).stdout)
        mine = next(r for r in runs if r["name"] == run)
        if mine["state"] in ("done", "stalled", "crashed", "stopped", "failed", "timeout"):
            return dict(mine)
        time.sleep(0.5)
    raise SystemExit(f"{run} did not end in {timeout} s")


def remote_json(env: dict[str, str], run: str, python: str) -> Any:
    """Run ``python`` (which prints JSON) in the run's folder there."""
    from shoal.remote import hosts, registry
    from shoal.remote.ssh import Connection

    os.environ["SHOAL_CONFIG_DIR"] = env["SHOAL_CONFIG_DIR"]
    r = registry.get(run)
    conn = Connection(hosts.find("bench"))
    out = conn.run(["sh", "-c", 'cd "$1" && ~/venv/bin/python -c "$2"', "sh", r.folder, python])
    return json.loads(out.stdout)


FIRST_START = """
import json, glob
from shoal.store.queries import Reader
d = sorted(glob.glob("bench-*"))[0]
with Reader(d) as r:
    print(json.dumps(min(a[3] for a in r.timeline())))
"""
CHAIN = "import json; print(json.dumps([json.loads(l) for l in open('chain.log')]))"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env, bare = setup(Path(tmp) / "cfg")
        t0 = time.time()
        run = submit(env, Path(tmp), 4, 0.1, "--time", "5")
        wait(env, run)
        first = remote_json(env, run, FIRST_START)
        data["submit_to_first_task_s"] = first - t0
        rows.append(
            common.row("submit to first task (Slurm)", first - t0, None, None, "-", None, "s")
        )
        shoal_cli("remote", "status", run, env=env)  # the master is up
        runs = common.alternate(
            {
                "bare ssh true": lambda: {
                    "s": common.timed(lambda: subprocess.run(bare, check=True))[0]
                },
                "shoal remote status": lambda: {
                    "s": common.timed(lambda: shoal_cli("remote", "status", run, env=env))[0]
                },
            },
            a.repeats,
            not a.quiet,
        )
        ssh_s = common.median([r["s"] for r in runs["bare ssh true"]])
        status_s = common.median([r["s"] for r in runs["shoal remote status"]])
        ratio = status_s / ssh_s
        data["status"] = runs
        rows.append(common.row("shoal remote status vs bare ssh true", status_s, ssh_s, ratio,
                               f"<= {TARGET}x", ratio <= TARGET, "s"))  # fmt: skip
        chained = submit(env, Path(tmp), 60, 1.0, "--time", "0:20", "--time-left", "0.1",
                         "--until-done")  # fmt: skip
        wait(env, chained)
        links = remote_json(env, chained, CHAIN)
        ends = [e for e in links if e["event"] == "end"]
        starts = [e for e in links if e["event"] == "start"]
        gaps = [s["time"] - e["time"] for e, s in zip(ends, starts[1:], strict=False)]
        data["chain_links"] = links
        data["chain_gaps_s"] = gaps
        gap = common.median(gaps) if gaps else None
        rows.append(common.row("gap between two allocations of a chain (Slurm)", gap, None,
                               None, "-", None, "s"))  # fmt: skip
    summary = (
        f"remote status {status_s * 1000:.0f} ms vs bare ssh {ssh_s * 1000:.0f} ms ({ratio:.2f}x, "
        f"target <= {TARGET}x); submit to first task {data['submit_to_first_task_s']:.1f} s; "
        f"chain gap {gap if gap is None else round(gap, 2)} s over {len(starts)} links"
    )
    common.report("remote", summary, rows, data, a)


if __name__ == "__main__":
    main()
