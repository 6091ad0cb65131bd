"""A persistent worker process: runs Python tasks one after another, no interpreter start each.

Started by the local backend as ``python -m shoal.backends.worker FD SPOOL_OUT SPOOL_ERR``, it
talks over one socket (``multiprocessing.connection`` framing) to the driver. Messages in:
``("run", task, attempt, function, fn_payload | None, payload, cores, env, taskdir)`` and
``("stop",)``; one reply per run: ``(task, attempt, ok, result, kind, error, started, ended)``.

Output: file descriptors 1 and 2 point at per-worker spool files. After each task the worker
moves whatever the task printed into ``tasks/<id>/stdout`` and ``stderr``; a silent task costs
no file at all, which keeps tiny tasks cheap.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from shoal.backends.execute import call, pin


def _drain(fd: int, taskdir: str, name: str) -> None:
    size = os.lseek(fd, 0, os.SEEK_CUR)
    if size <= 0:
        return
    os.makedirs(taskdir, exist_ok=True)
    with open(os.path.join(taskdir, name), "ab") as out:
        os.lseek(fd, 0, os.SEEK_SET)
        left = size
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 20), size - left)
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides how a run stops
    conn = Connection(int(argv[0]))
    functions: dict[int, Callable[..., Any]] = {}
    base_env = dict(os.environ)
    last_env: dict[str, str] = {}
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        if msg[0] == "stop":
            return
        _, task, attempt, fid, fn_payload, payload, cores, env, taskdir = msg
        if fn_payload is not None:
            functions[fid] = cloudpickle.loads(fn_payload)
        if env != last_env:
            for key in last_env:
                if key in base_env:
                    os.environ[key] = base_env[key]
                else:
                    os.environ.pop(key, None)
            last_env = env
        pin(cores, env)
        reply = call(functions[fid], payload, taskdir)
        sys.stdout.flush()
        sys.stderr.flush()
        _drain(1, taskdir, "stdout")
        _drain(2, taskdir, "stderr")
        conn.send_bytes(pickle.dumps((task, attempt, *reply), protocol=5))


if __name__ == "__main__":
    main(sys.argv[1:])
