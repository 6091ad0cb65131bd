"""The Flux adapter's pure parts: jobspecs and the translation of job events.

Flux cannot be installed on this project's machines (no flux-core package; the PyPI bindings
need its libraries), so the backend itself is tested only where a broker exists.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import pytest

from shoal.backends.base import Job
from shoal.backends.flux import jobspec, nodes_of, outcome
from shoal.core.resources import Placement, Slot


def job(placement: Placement, cpus: int = 1, kind: str = "command") -> Job:
    return Job(
        3, 2, "t", kind, placement, "/runs/x/tasks/3", argv=["lmp", "-in", "in.melt"], cpus=cpus
    )


def test_jobspec_of_an_mpi_task_with_gpus_on_one_node() -> None:
    p = Placement((Slot(0, (0, 1, 2, 3), (0, 1), 0, 2),))
    spec = jobspec(job(p, cpus=2), ["lmp", "-in", "in.melt"], ["n1"], {"A": "1"}, timeout=60)
    assert spec["version"] == 1
    (slot,) = spec["resources"]
    assert slot == {
        "type": "slot",
        "count": 2,
        "label": "task",
        "with": [{"type": "core", "count": 2}, {"type": "gpu", "count": 1}],
    }
    task = spec["tasks"][0]
    assert task == {"command": ["lmp", "-in", "in.melt"], "slot": "task", "count": {"per_slot": 1}}
    system = spec["attributes"]["system"]
    assert system["duration"] == 60.0 and system["environment"] == {"A": "1"}
    assert system["constraints"] == {"hostlist": ["n1"]}
    assert system["shell"]["options"]["output"]["stdout"]["path"] == "/runs/x/tasks/3/stdout"


def test_jobspec_across_nodes_wraps_the_slots_in_nodes() -> None:
    p = Placement((Slot(0, (0,), (), 0, 1), Slot(1, (0,), (), 0, 1)))
    spec = jobspec(job(p), ["hostname"], ["a", "b"], {})
    (node,) = spec["resources"]
    assert node["type"] == "node" and node["count"] == 2
    assert node["with"][0]["count"] == 1  # one rank on each of the two nodes, two in all
    assert spec["attributes"]["system"]["constraints"] == {"hostlist": ["a", "b"]}


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("submit", 1.0, {}), ("start", 2.0, {})], None),
        ([("start", 2.0, {}), ("finish", 5.0, {"status": 0})], (True, "", 0)),
        ([("start", 2.0, {}), ("finish", 5.0, {"status": 3 << 8})], (False, "exit", 3)),
        ([("start", 2.0, {}), ("finish", 5.0, {"status": 9})], (False, "crash", -9)),
        (
            [("start", 2.0, {}), ("exception", 4.0, {"type": "timeout", "severity": 0})],
            (False, "timeout", None),
        ),
        (
            [("exception", 1.5, {"type": "cancel", "severity": 0, "note": "by user"})],
            (False, "cancelled", None),
        ),
        (
            [("start", 2.0, {}), ("exception", 3.0, {"type": "node-failure", "severity": 0})],
            (False, "lost", None),
        ),
        ([("start", 2.0, {}), ("exception", 3.0, {"type": "x", "severity": 1})], None),
    ],
)
def test_events_become_outcomes(events: list, expected: tuple | None) -> None:  # type: ignore[type-arg]
    o = outcome(3, 2, events)
    if expected is None:
        assert o is None
        return
    assert o is not None and (o.task, o.attempt) == (3, 2)
    assert (o.ok, o.kind, o.exit_code) == expected
    if any(n == "start" for n, _, _ in events):
        assert o.started == 2.0


def test_uneven_ranks_across_nodes_are_refused() -> None:
    from shoal.errors import BackendError

    p = Placement((Slot(0, (0, 1), (), 0, 2), Slot(1, (0,), (), 0, 1)))
    with pytest.raises(BackendError, match=r"same number of ranks on each node.*\[2, 1\]"):
        jobspec(job(p), ["x"], ["a", "b"], {})


def test_the_resource_set_is_read_from_its_json_text() -> None:
    import json

    from shoal.backends.flux import resource_set

    class Set:
        class all:  # the shape of flux.resource's object
            @staticmethod
            def encode() -> str:
                return json.dumps(
                    {
                        "execution": {
                            "R_lite": [{"rank": "0", "children": {"core": "0-3"}}],
                            "nodelist": ["n0"],
                        }
                    }
                )

    (n,) = nodes_of(resource_set(Set()))
    assert (n.name, n.cores) == ("n0", (0, 1, 2, 3))


def test_nodes_from_a_resource_set() -> None:
    r = {
        "execution": {
            "R_lite": [
                {"rank": "0-1", "children": {"core": "0-7", "gpu": "0-1"}},
                {"rank": "2", "children": {"core": "0-3"}},
            ],
            "nodelist": ["node[01-02]", "big3"],
        }
    }
    a, b, c = nodes_of(r)
    assert (a.name, a.cores, a.gpus) == ("node01", tuple(range(8)), (0, 1))
    assert b.name == "node02" and (c.name, len(c.cores), c.gpus) == ("big3", 4, ())


def test_the_backend_needs_a_flux_broker() -> None:
    pytest.importorskip(
        "flux", reason="the Flux Python bindings are not installed (they come with flux-core)"
    )
    from shoal.backends.flux import FluxBackend

    try:
        b = FluxBackend()
    except Exception as err:  # bindings without a broker
        pytest.skip(f"no Flux broker to connect to: {err}")
    assert b.nodes()
    b.close()


def test_a_successful_command_job_carries_its_output(tmp_path: Path) -> None:
    from shoal.backends.flux import finish
    from shoal.core.events import Outcome

    (tmp_path / "stdout").write_text("done\n")
    j = Job(
        3, 1, "t", "command", Placement((Slot(0, (0,), (), 0, 1),)), str(tmp_path), argv=["echo"]
    )
    o = finish(j, Outcome(3, 1, True, 1.0, 2.0))
    assert pickle.loads(o.result or b"")["stdout"] == "done\n"


def test_the_backend_warns_that_it_is_experimental() -> None:
    """It has never run against a broker here: whoever makes one is told so, every time
    (without the bindings it still warns, then says what is missing)."""
    from shoal.backends.flux import FluxBackend, FluxExperimental

    with pytest.warns(FluxExperimental, match="experimental"), contextlib.suppress(Exception):
        FluxBackend().close()


def test_flux_is_never_chosen_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a Flux instance the run still uses the local backend unless Flux is asked for
    by name: the Flux backend is experimental (issue 15, point 23)."""
    from shoal.backends.choose import default_backend as _default_backend

    monkeypatch.setenv("FLUX_URI", "local:///tmp/flux-nowhere")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SHOAL_BACKEND", raising=False)
    assert _default_backend() == "local"
    monkeypatch.setenv("SHOAL_BACKEND", "flux")
    assert _default_backend() == "flux"
