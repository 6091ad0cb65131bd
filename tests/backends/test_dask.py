"""The Dask backend against the conformance suite, on a real scheduler and workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conformance import BackendContract
from .dask_fixtures import Cluster, dask_cluster  # noqa: F401 - fixture

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip: shoal[dask])")

from shoal.backends.dask import DaskBackend, worker_nodes


def test_worker_nodes_from_scheduler_info() -> None:
    info = {
        "workers": {
            "tcp://127.0.0.3:1": {
                "name": "w1",
                "nthreads": 4,
                "resources": {"cores": 4, "gpus": 1},
                "memory_limit": 2 * 2**30,
            },
            "tcp://127.0.0.2:1": {"name": "w0", "nthreads": 2, "resources": {}},
        }
    }
    a, b = worker_nodes(info)
    assert (a.name, a.cores, a.gpus, a.memory) == ("w0", (0, 1), (), 0)
    assert (b.name, b.cores, b.gpus, b.memory) == ("w1", (0, 1, 2, 3), (0,), 2048)


class TestDaskConformance(BackendContract):
    @pytest.fixture
    def backend(self, rundir: Path, dask_cluster: Cluster) -> Iterator[DaskBackend]:  # noqa: F811
        b = DaskBackend(scheduler_file=str(dask_cluster.scheduler_file), wait_for=2)
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()

    def test_each_worker_is_a_node(self, backend: DaskBackend) -> None:
        assert [n.name for n in backend.nodes()] == ["w0", "w1"]
        assert all(len(n.cores) == 2 for n in backend.nodes())
