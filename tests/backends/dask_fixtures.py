"""A real Dask cluster for tests: a ``dask scheduler`` and ``dask worker`` processes, each on
its own loopback address (127.0.0.1 for the scheduler, 127.0.0.2, 127.0.0.3 ... for workers).

Workers get the test process's import path (as shoal's local workers do), so functions defined
in test modules import there. Skipped, with the reason, when dask.distributed is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Cluster:
    scheduler_file: Path
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: Path | None = None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *paths])
    env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    return env


def start_cluster(folder: Path, workers: int = 2, cores: int = 2) -> Cluster:
    if importlib.util.find_spec("distributed") is None:
        pytest.skip("dask.distributed is not installed (pip: shoal[dask])")
    folder.mkdir(parents=True, exist_ok=True)
    sfile = folder / "scheduler.json"
    env = _env()
    logs = folder
    sched = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--scheduler-file",
            str(sfile),
            "--no-dashboard",
        ],
        stdout=open(logs / "scheduler.log", "wb"),  # noqa: SIM115 - the process keeps it
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs = [sched]
    deadline = time.monotonic() + 60
    while not sfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sfile.exists(), (logs / "scheduler.log").read_text()
    address = json.loads(sfile.read_text())["address"]
    for i in range(workers):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(sfile),
                    "--host",
                    f"127.0.0.{i + 2}",
                    "--name",
                    f"w{i}",
                    "--nthreads",
                    str(cores),
                    "--resources",
                    f"cores={cores}",
                    "--no-dashboard",
                    "--local-directory",
                    str(folder / f"w{i}"),
                ],
                stdout=open(logs / f"w{i}.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    return Cluster(sfile, address, procs, logs)


def stop_cluster(c: Cluster) -> None:
    for p in reversed(c.procs):
        p.terminate()
    for p in c.procs:
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("dask"))
    try:
        yield c
    finally:
        stop_cluster(c)
