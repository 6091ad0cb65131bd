"""Processes that stop answering: a stopped worker or fork server must not hang a run or
defeat a timeout (issue 15, points 7 and 8).

Each test stops a real process of the run with SIGSTOP from a helper thread, and lets it go
on (SIGCONT) only after the run ended, or after a long safety limit that the test then
reports as a failure: the run must end by itself while the process is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import shoal
from shoal.backends.local import LocalBackend
from shoal.backends.local.zygote import Zygote

SAFETY = 90.0  # seconds after which the helper thread lets the stopped process go on


def stop_when(find: Callable[[], int | None], done: threading.Event) -> dict[str, object]:
    """Start a thread that SIGSTOPs the pid ``find`` returns once it returns one, and
    SIGCONTs it when ``done`` is set (or after SAFETY seconds, noted as ``rescued``)."""
    seen: dict[str, object] = {}

    def body() -> None:
        deadline = time.monotonic() + SAFETY
        pid = None
        while pid is None and time.monotonic() < deadline and not done.is_set():
            pid = find()
            if pid is None:
                time.sleep(0.01)
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)
        seen["stopped"] = pid
        if not done.wait(max(0.0, deadline - time.monotonic())):
            seen["rescued"] = True
        with contextlib.suppress(ProcessLookupError):  # it may have been killed
            os.kill(pid, signal.SIGCONT)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    seen["thread"] = t
    return seen


def test_a_stopped_worker_does_not_defeat_a_command_timeout(base: Path) -> None:
    nap = shoal.command("sleep 30", timeout=2)
    with shoal.Workflow("stopped-worker") as wf:
        t = nap()
    done = threading.Event()

    def worker_of_the_sleep() -> int | None:
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] == ["sleep", "30"]:
                try:
                    return p.ppid()
                except psutil.Error:
                    return None
        return None

    seen = stop_when(worker_of_the_sleep, done)
    try:
        run = wf.run(base=base, cpus=1, progress=False)
    finally:
        done.set()
    assert "stopped" in seen, "the worker was never seen running the command"
    assert "rescued" not in seen, "the run waited for the stopped worker"
    f = {x["id"]: x for x in run.failures()}
    assert f[t.id]["kind"] == "timeout", f


def test_a_stopped_fork_server_does_not_hang_the_run(
    base: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Zygote, "PATIENCE", 2.0)
    gate = Path(base) / "gate"

    @shoal.task
    def hold(path: str) -> int:
        while not os.path.exists(path):
            time.sleep(0.01)
        return 1

    @shoal.task
    def one(x: int) -> int:
        return x

    with shoal.Workflow("stopped-zygote") as wf:
        first = hold(str(gate))
        rest = [one.options(cpus=2)(i) for i in range(4)]  # another width: a new worker
        for r in rest:
            r.after(first)
    done = threading.Event()
    backend = LocalBackend(cpus=2)

    def zygote() -> int | None:
        z = backend._zygote
        if z is None or not backend.workers:
            return None
        # Stop it once the first worker runs, then let the first task end.
        if not gate.exists():
            pid = z.proc.pid
            threading.Timer(0.2, gate.write_text, ("go",)).start()
            return pid
        return None

    seen = stop_when(zygote, done)
    try:
        run = shoal.run(wf, backend=backend, base=base, progress=False)
    finally:
        done.set()
    assert "stopped" in seen
    assert "rescued" not in seen, "the run waited for the stopped fork server"
    assert run.ok, run.failures()
    assert [run.result(r) for r in rest] == [0, 1, 2, 3]
    assert "stopped answering" in capfd.readouterr().err
