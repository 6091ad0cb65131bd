"""Whole runs through the Slurm backend, with the driver inside a real allocation.

Each test writes a workflow script and runs it under ``salloc`` (the driver then sees
``SLURM_JOB_ID`` and picks the Slurm backend by itself), then reads the run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.store.queries import Reader

pytestmark = pytest.mark.usefixtures("slurm")


def in_allocation(tmp_path: Path, code: str, *salloc: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "wf.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SHOAL_BACKEND"] = ""  # chosen from SLURM_JOB_ID inside the allocation
    return subprocess.run(
        ["salloc", "-J", "shoal-test", *salloc, sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def rundir(tmp_path: Path) -> Path:
    (d,) = [p for p in tmp_path.iterdir() if (p / "shoal.db").exists()]
    return d


def attempts(d: Path) -> list[dict[str, Any]]:
    out = []
    with Reader(d) as r:
        for t in r.tasks():
            for a in r.attempts(t.id):
                out.append({"task": t.id, "name": t.name, "state": t.state, "tags": t.tags, **a})
    return out


def test_mixed_tasks_pack_into_one_allocation(tmp_path: Path) -> None:
    p = in_allocation(
        tmp_path,
        """
        import shoal
        # each step prints when it really started and ended, from inside the step
        nap = shoal.command("sh -c 'date +%s.%N; sleep 1; date +%s.%N'")
        gpu = shoal.command("sh -c 'echo $CUDA_VISIBLE_DEVICES'", gpus=1, tags="gpu")
        with shoal.Workflow("pack") as wf:
            for cpus in [1] * 8 + [2] * 4 + [4] * 2:
                nap.options(cpus=cpus, tags=f"c{cpus}")()
            gpus = [gpu() for _ in range(4)]
            gpu.options(gpus=2, tags="gpu2")()
        run = wf.run()
        assert run.ok, run.failures()
        """,
        "-N1",
        "-n16",
        "--gres=gpu:4",
    )
    assert p.returncode == 0, p.stderr
    d = rundir(tmp_path)
    rows = attempts(d)
    assert len(rows) == 19 and all(r["state"] == "succeeded" for r in rows)
    with Reader(d) as r:
        meta_nodes = r.nodes()
    assert len(meta_nodes) == 1 and len(meta_nodes[0]["cores"]) == 16
    # held cores never exceed the node, and steps of different widths ran side by side, as
    # the steps themselves saw it (not the driver's clock)
    naps = [a for a in rows if any(t.startswith("c") for t in a["tags"])]
    events = []
    for a in naps:
        t0, t1 = map(float, (d / "tasks" / str(a["task"]) / "stdout").read_text().split())
        width = len(a["placement"][0][1])
        events += [(t0, width), (t1, -width)]
    held = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        held += delta
        peak = max(peak, held)
    assert 4 < peak <= 16
    widths = {len(a["placement"][0][1]) for a in naps}
    assert widths == {1, 2, 4}
    # each GPU task saw as many GPUs as its placement holds (Slurm chooses which)
    for a in rows:
        if "gpu" in a["tags"] or "gpu2" in a["tags"]:
            seen = (d / "tasks" / str(a["task"]) / "stdout").read_text().split()[-1]
            assert len(seen.split(",")) == len(a["placement"][0][2])


def test_mpi_task_and_failures(tmp_path: Path) -> None:
    p = in_allocation(
        tmp_path,
        """
        import shoal
        ranks = shoal.command("sh -c 'echo rank $SLURM_PROCID of $SLURM_NTASKS'", ranks=4)
        with shoal.Workflow("steps") as wf:
            mpi = ranks()
            bad = shoal.command("sh -c 'exit 3'", name="bad")()
            slow = shoal.command("sleep 30", name="slow", timeout=1)()
        run = wf.run()
        print("RESULT", run.result(mpi)["stdout"].replace("\\n", "|"))
        """,
        "-N1",
        "-n16",
    )
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT"))
    assert sorted(line[7:].strip("|").split("|")) == [f"rank {i} of 4" for i in range(4)]
    d = rundir(tmp_path)
    by = {a["name"]: a for a in attempts(d)}
    assert by["bad"]["state"] == "failed" and by["bad"]["exit_code"] == 3
    assert by["slow"]["state"] == "failed" and by["slow"]["kind"] == "timeout"
    assert by["slow"]["ended"] - by["slow"]["started"] < 15


def test_cancel_stops_the_step(tmp_path: Path) -> None:
    p = in_allocation(
        tmp_path,
        """
        import os, subprocess, shoal
        with shoal.Workflow("cancel") as wf:
            long = shoal.command("sleep 60", name="long", tags="long")()

        @wf.on("task-started", tags="long")
        def stop_it(event, ctl):
            ctl.cancel(event.task)

        run = wf.run()
        steps = subprocess.run(["squeue", "-h", "-s", "-j", os.environ["SLURM_JOB_ID"]],
                               capture_output=True, text=True).stdout
        print("STEPS", [s for s in steps.splitlines() if "shoal-" in s])
        """,
        "-N1",
        "-n16",
    )
    assert p.returncode == 0, p.stderr
    (a,) = attempts(rundir(tmp_path))
    assert a["state"] == "cancelled"
    assert a["ended"] - a["dispatched"] < 20, a
    assert "STEPS []" in p.stdout


def test_allocation_end_stops_the_run_and_the_next_allocation_resumes_it(tmp_path: Path) -> None:
    (tmp_path / "wf.py").write_text(
        textwrap.dedent(
            """
            import shoal
            nap = shoal.command("sleep 2")
            with shoal.Workflow("chained") as wf:
                for _ in range(120):
                    nap()
            wf.run()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}

    def submit(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "shoal.cli.main", "slurm", "submit", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()[2]

    def wait(job: str) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
            if not q.stdout.strip():
                return
            time.sleep(0.5)
        raise AssertionError(f"job {job} did not end")

    # a one-minute allocation; the driver stops starting tasks 45 s before its end
    first = submit("wf.py", "--time", "1", "--time-left", "0.75", "--sbatch=-n16")
    wait(first)
    d = rundir(tmp_path)
    with Reader(d) as r:
        meta = r.meta()
        done = len(r.tasks(state="succeeded"))
    out1 = (tmp_path / f"shoal-slurm-{first}.out").read_text()
    assert meta["state"] == "interrupted", out1
    assert 0 < done < 120, out1
    second = submit("--resume", str(d), "--time", "5", "--sbatch=-n16")
    wait(second)
    with Reader(d) as r:
        assert r.meta()["state"] == "succeeded", (
            tmp_path / f"shoal-slurm-{second}.out"
        ).read_text()
        assert len(r.tasks(state="succeeded")) == 120


def test_gpu_steps_run_side_by_side_and_signals_are_crashes(tmp_path: Path) -> None:
    """Four 1-GPU steps in an allocation with 4 GPUs run at once, each on its own GPU (they
    used to take every GPU of the job each, one after another, while the store said they all
    started at 0 s); a segfault and a SIGKILL are ``crash`` as locally (not exit 139/137);
    Python tasks on the persistent workers get OMP_NUM_THREADS of their own cpus."""
    p = in_allocation(
        tmp_path,
        """
        import os, shoal
        gpu = shoal.command(
            "sh -c 'date +%s.%N; echo $CUDA_VISIBLE_DEVICES; sleep 3; date +%s.%N'", gpus=1
        )

        def threads():
            import os
            return os.environ.get("OMP_NUM_THREADS")

        with shoal.Workflow("gpus") as wf:
            gs = [gpu.options(name=f"g{i}")() for i in range(4)]
            shoal.command("kill -SEGV $$", name="segv")()
            shoal.command("kill -KILL $$", name="kill9")()
            t4 = shoal.task(threads).options(cpus=4, name="t4")()
            t1 = shoal.task(threads).options(name="t1")()
        run = wf.run()
        print("OMP", run.result(t4), run.result(t1))
        """,
        "-N1",
        "-n16",
        "--gres=gpu:4",
    )
    assert p.returncode == 0, p.stderr
    assert "OMP 4 1" in p.stdout, p.stdout + p.stderr
    d = rundir(tmp_path)
    by = {a["name"]: a for a in attempts(d)}
    spans, seen = [], []
    for i in range(4):
        t0, ids, t1 = (d / "tasks" / str(by[f"g{i}"]["task"]) / "stdout").read_text().split()
        spans.append((float(t0), float(t1)))
        seen.append(ids)
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"steps did not overlap: {spans}"
    assert sorted(seen) == ["0", "1", "2", "3"], seen
    for name, signal in (("segv", "SIGSEGV"), ("kill9", "SIGKILL")):
        a = by[name]
        assert a["state"] == "failed" and a["kind"] == "crash", a
        assert signal in a["error"], a


def test_submit_refuses_what_the_cluster_cannot_run(tmp_path: Path) -> None:
    """Refused at once, before sbatch, with the numbers: more nodes than the partition has
    (it used to pend forever), a request no node can satisfy (it used to fail only once the
    job started), and --resume of a folder with no run."""
    (tmp_path / "wf.py").write_text("import shoal\n")
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout

    def submit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shoal.cli.main", "slurm", "submit", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    nodes = subprocess.run(["sinfo", "-h", "-o", "%D"], capture_output=True, text=True)
    total = sum(int(x) for x in nodes.stdout.split())
    out = submit("wf.py", "--time", "1", "--nodes", str(total + 2))
    assert out.returncode != 0 and f"has {total} node(s)" in out.stderr, out.stderr
    out = submit("wf.py", "--time", "1", "--sbatch=--gres=gpu:64")
    assert out.returncode != 0 and "sbatch --test-only" in out.stderr, out.stderr
    out = submit("--resume", "empty", "--time", "1")
    assert out.returncode != 0 and "no shoal.db" in out.stderr, out.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert set(after.split()) <= set(before.split()), "a job was submitted"
