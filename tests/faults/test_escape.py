"""Nothing a task started outlives the run, even when it left the task's process group with
``setsid`` or a double fork (issue 15, point 13): the workers and the fork server are child
subreapers, so such orphans are given to them, and they end them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

import shoal


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone_soon(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


@shoal.task
def escape_python(path: str) -> int:
    """Start a sleep in a session of its own through a double fork, note its pid."""
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys\n"
            "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            f"open({path!r}, 'w').write(str(p.pid))\n"
            "os._exit(0)\n",
        ],
    )
    p.wait()
    return 1


def test_a_daemon_a_python_task_starts_ends_with_the_run(base: Path, tmp_path: Path) -> None:
    note = tmp_path / "pid"
    with shoal.Workflow("escape") as wf:
        escape_python(str(note))
    run = wf.run(base=base, cpus=1, progress=False)
    assert run.ok
    pid = int(note.read_text())
    assert gone_soon(pid), f"process {pid} that a task started outlived the run"


def test_a_daemon_a_command_starts_ends_with_the_run(base: Path, tmp_path: Path) -> None:
    note = tmp_path / "pid"
    # The inner shell notes its pid once it leads a session of its own, then becomes the
    # sleep; the command ends once the note is there.
    cmd = shoal.command(
        f"setsid sh -c 'echo $$ > {note}; exec sleep 300' & "
        f"while [ ! -s {note} ]; do sleep 0.01; done"
    )
    with shoal.Workflow("escape-command") as wf:
        cmd()
    run = wf.run(base=base, cpus=1, progress=False)
    assert run.ok, run.failures()
    pid = int(note.read_text())
    assert gone_soon(pid), f"process {pid} that a command started outlived the run"


def test_a_daemon_of_a_task_whose_worker_was_killed_ends(base: Path, tmp_path: Path) -> None:
    """The worker is killed (a timeout of a Python task): its orphans go to the fork
    server, which ends them."""
    note = tmp_path / "pid"

    @shoal.task
    def escape_then_hang(path: str) -> None:
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, subprocess\n"
                "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
                f"open({path!r}, 'w').write(str(p.pid))\n"
                "os._exit(0)\n",
            ],
        ).wait()
        time.sleep(300)

    with shoal.Workflow("escape-killed") as wf:
        t = escape_then_hang.options(timeout=1)(str(note))
    run = wf.run(base=base, cpus=1, progress=False)
    assert [f["id"] for f in run.failures()] == [t.id]
    pid = int(note.read_text())
    assert gone_soon(pid), f"process {pid} outlived its killed worker"
