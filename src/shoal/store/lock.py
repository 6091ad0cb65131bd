"""One driver per run directory: an exclusive lock on ``driver.lock`` for the driver's life.

The lock is ``flock`` on an open file, so the kernel releases it when its owner dies in any way
(kill -9, a crash, the end of an allocation): a lock left behind by a dead driver is stale by
construction and the next driver takes it. The file holds the owner's pid, host and start time,
so that a refusal can name the owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from shoal.errors import StoreError


class Lock:
    """Held from :meth:`acquire` until :meth:`release` (or the process ends)."""

    def __init__(self, rundir: Path) -> None:
        self.path = Path(rundir) / "driver.lock"
        self.fd: int | None = None

    def acquire(self) -> Lock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(
                f"cannot open {self.path}, the lock of the run's driver: {err.strerror or err}. "
                "The run directory must be writable to run or resume it (a read-only copy "
                "can be read with shoal status, shoal tasks and shoal logs): make it "
                "writable, or copy it somewhere writable and resume the copy."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = owner_of(self.path)
            pid = _pid_of(self.path)
            os.close(fd)
            # shoal cancel stops tasks, not the driver: the driver stops on SIGTERM or Ctrl-C
            # (gracefully, leaving the run resumable).
            raise StoreError(
                f"{self.path.parent} is in use by another driver ({owner}). Only one driver may "
                "run a run directory: wait for it to end, or stop it with Ctrl-C in its "
                f"terminal or `kill -TERM {pid or '<pid>'}` on its host (a graceful stop: the "
                f"run can then be resumed with shoal resume {self.path.parent}); a driver that "
                "died leaves no lock behind."
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.write(fd, json.dumps(info).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def owner_of(path: Path) -> str:
    """Who holds the lock, in words (pid, host, since when, and whether the pid is alive)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "owner unknown"
    pid, host = info.get("pid"), info.get("host")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    alive = ""
    if host == socket.gethostname() and pid:
        try:
            os.kill(int(pid), 0)
            alive = ", alive"
        except ProcessLookupError:
            alive = ", not alive here: the lock is stale and will be free when its holder exits"
        except PermissionError:
            alive = ", alive"
    return f"pid {pid} on {host}, since {since}{alive}"


def _pid_of(path: Path) -> int | None:
    try:
        pid = json.loads(path.read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None
    return int(pid) if pid else None


def held(rundir: Path) -> bool:
    """Whether a driver holds the run directory now."""
    path = Path(rundir) / "driver.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
