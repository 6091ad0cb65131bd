"""jobflow Flows on shoal, side by side with jobflow's own ``run_locally``.

Each test builds a flow, runs a deep copy of it (same uuids) with jobflow's ``run_locally``
and another with shoal, and compares what each left in its JobStore: the same documents for
the jobs of the flow, and the same (name, index, output) for the jobs made at run time (whose
uuids are new in each run)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jobflow", reason="jobflow is not installed: pip install -e '.[jobflow]'")

from jobflow import Flow, Response
from jobflow import run_locally as jf_run_locally

import shoal
import shoal.jobflow
from shoal.errors import DefinitionError
from shoal.jobflow import outputs, run_locally, set_options
from shoal.store.queries import Reader

from . import flows
from .compare import new_store, same, twin


def test_every_response_field_as_jobflow(base: Path) -> None:
    flow, jobs = flows.every_response()
    theirs, ours, run = twin(flow, base=base)
    assert run.state == "succeeded"
    same(theirs, ours, flow)
    for name, j in jobs.items():
        assert ours.get_output(j.uuid) == theirs.get_output(j.uuid), name
        assert run.result(j) == theirs.get_output(j.uuid), name
    assert run.result(jobs["c"]) == 10  # replace chain: the newest index, 0, + 10
    assert run.result(jobs["x"]) == "orig"  # a flow without output: the old index
    assert [d["index"] for d in ours.docs_store.query({"uuid": jobs["r"].uuid})] == [1, 2, 3]


def test_unresolved_references_flow_decorator_and_dynamic_updates(base: Path) -> None:
    """``resolve_references=False`` hands the job the reference itself; a ``@flow`` function
    makes a Flow whose output its dependents read; metadata and name updates made with
    ``dynamic=True`` reach the jobs a Response makes, as jobflow passes them on."""
    made = flows.two_adds(1)  # @flow: 1 + 1 + 2
    raw = flows.kind_of(made.output)
    after = flows.add(made.output, 10)
    chain = flows.replace_self(2)  # indexes 1, 2, 3 of one uuid, made at run time
    flow = Flow([made, raw, after, chain])
    flow.update_metadata({"campaign": "eos"}, dynamic=True)
    chain.append_name(" [loop]", dynamic=True)
    theirs, ours, run = twin(flow, base=base)
    same(theirs, ours, flow)
    assert run.result(raw) == "OutputReference" == theirs.get_output(raw.uuid)
    assert run.result(after) == 14
    for store in (theirs, ours):
        docs = sorted(store.query({"uuid": chain.uuid}), key=lambda d: d["index"])
        assert [d["index"] for d in docs] == [1, 2, 3]
        assert {d["name"] for d in docs} == {"replace_self [loop]"}
        assert all(d["metadata"].get("campaign") == "eos" for d in docs)


def test_references_at_depth(base: Path) -> None:
    p = flows.pair(5)
    chain = flows.ident(p.output["k"][0]["attr"])
    attr = flows.ident(p.output.n)  # .attr on a dict is a key
    objects = flows.in_objects(
        flows.Point(p.output.n), flows.Model(v=p.output["k"]), {"t": [(p.output.n,)]}
    )
    flow = Flow([p, chain, attr, objects])
    theirs, ours, run = twin(flow, base=base)
    same(theirs, ours, flow)
    assert run.result(chain) == 5 and run.result(attr) == 5
    assert run.result(objects) == [5, [{"attr": 5}], {"t": [[5]]}]  # tuples come back as lists


def test_additional_stores_and_blobs(base: Path) -> None:
    j = flows.with_blob(4)
    child = flows.ident(j.output["data"])
    flow = Flow([j, child])
    theirs, ours, run = twin(flow, "data", base=base)
    same(theirs, ours, flow)
    assert ours.get_output(j.uuid, load=True)["data"] == [0, 1, 2, 3]
    assert ours.get_output(j.uuid)["data"]["store"] == "data"  # a pointer without load
    blob = next(iter(ours.additional_stores["data"].query({})))
    assert blob["job_uuid"] == j.uuid and blob["data"] == [0, 1, 2, 3]
    assert run.result(child) == [0, 1, 2, 3]
    # a replay again (a resume does one) writes nothing twice
    counts = (ours.docs_store.count(), ours.additional_stores["data"].count())
    assert shoal.jobflow.replay(run.dir, ours) == counts[0]
    assert (ours.docs_store.count(), ours.additional_stores["data"].count()) == counts
    # the run directory keeps every output: read back without the store
    kept = outputs(run.dir)
    assert kept.get_output(j.uuid, load=True) == ours.get_output(j.uuid, load=True)


def test_stop_children_and_stop_jobflow(base: Path) -> None:
    s = flows.stop_children(1)
    child = flows.add(s.output, 1)
    grandchild = flows.add(child.output, 1)
    other = flows.add(2, 2)
    flow = Flow([s, child, grandchild, other])
    theirs, ours, run = twin(flow, base=base)
    same(theirs, ours, flow)
    assert ours.query_one({"uuid": child.uuid}) is None
    assert ours.get_output(other.uuid) == 4
    with Reader(run.dir) as r:
        assert r.find(child.uuid).state == "skipped"
        assert r.find(grandchild.uuid).state == "skipped"  # transitively, as in jobflow
        assert r.find(other.uuid).state == "succeeded"
    stop = flows.stop_jobflow(1)
    after = flows.add(stop.output, 1)
    run2 = shoal.run(Flow([stop, after]), store=new_store(), progress=False, base=base)
    assert run2.state == "stopped"


def test_run_locally_drop_in(base: Path, tmp_path: Path) -> None:
    flow, jobs = flows.every_response()
    responses = run_locally(copy.deepcopy(flow), log=False, store=new_store(), base=base)
    theirs = jf_run_locally(copy.deepcopy(flow), log=False, store=new_store())
    assert set(responses) >= set(theirs) - {u for u in theirs if u not in responses}
    for uuid, by_index in theirs.items():
        if uuid in {j.uuid for j in jobs.values()}:
            assert sorted(responses[uuid]) == sorted(by_index)
            for i, resp in by_index.items():
                mine = responses[uuid][i]
                assert isinstance(mine, Response)
                if "OutputReference" not in repr(resp.output):  # new uuids each run
                    assert mine.output == resp.output
                assert mine.job_dir == resp.job_dir
                assert (mine.replace is None) == (resp.replace is None)
                assert mine.stored_data == resp.stored_data


def test_run_locally_folders(base: Path, tmp_path: Path) -> None:
    jobs = [flows.where() for _ in range(3)]
    root = tmp_path / "root"
    responses = run_locally(
        Flow(jobs), log=False, store=new_store(), create_folders=True, root_dir=root, base=base
    )
    seen = {responses[j.uuid][1].output for j in jobs}
    assert len(seen) == 3
    for path in seen:
        assert re.fullmatch(r"job_\d{4}(-\d\d){5}-\d{6}-\d{5}", Path(path).name), path
        assert Path(path).parent == root.resolve()
        assert responses[jobs[0].uuid][1].job_dir is not None
    # without folders every job runs in root_dir
    flat = flows.where()
    out = run_locally(flat, log=False, store=new_store(), root_dir=root, base=base)
    assert out[flat.uuid][1].output == str(root.resolve())


def test_run_locally_failures(base: Path) -> None:
    bad = flows.fail("boom")
    child = flows.add(bad.output, 1)
    ok = flows.add(1, 1)
    flow = Flow([bad, child, ok])
    out = run_locally(copy.deepcopy(flow), log=False, store=new_store(), base=base)
    assert bad.uuid not in out and child.uuid not in out and out[ok.uuid][1].output == 2
    with pytest.raises(RuntimeError, match="Flow did not finish running successfully"):
        run_locally(
            copy.deepcopy(flow), log=False, store=new_store(), ensure_success=True, base=base
        )
    with pytest.raises(KeyError, match="boom") as caught:
        run_locally(
            copy.deepcopy(flow), log=False, store=new_store(), raise_immediately=True, base=base
        )
    assert type(caught.value) is KeyError  # the job's own exception, not its text


def test_manager_config_sets_resources(base: Path) -> None:
    two = flows.cpus_seen()
    one = flows.cpus_seen()
    two.update_config({"manager_config": {"shoal": {"cpus": 2}}})
    run = shoal.run(Flow([two, one]), store=new_store(), progress=False, base=base, cpus=2)
    assert run.result(two) == 2 and run.result(one) == 1
    flow = Flow([flows.cpus_seen(), flows.AddMaker(b=2).make(1)])
    set_options(flow, class_filter=flows.AddMaker, timeout=60, cpus=2)
    maker_job = flow.jobs[1]
    assert maker_job.config.manager_config == {"shoal": {"timeout": 60, "cpus": 2}}
    assert flow.jobs[0].config.manager_config == {}
    run = shoal.run(flow, store=new_store(), progress=False, base=base, cpus=2)
    assert run.result(maker_job) == 3


def test_generated_jobs_inherit_manager_config(base: Path) -> None:
    j = flows.become_cpus_seen()
    j.update_config({"manager_config": {"shoal": {"cpus": 2}}})
    run = shoal.run(j, store=new_store(), progress=False, base=base, cpus=2)
    assert run.result(j) == 2  # the replacement ran with the cores of the job it replaced


def test_bad_input_is_refused_naming_the_job(base: Path) -> None:
    j = flows.add(1)
    j.update_config({"manager_config": {"shoal": {"cpu": 2}}})
    with pytest.raises(DefinitionError, match=rf"job add \({j.uuid}\).*unknown option 'cpu'.*cpus"):
        shoal.run(j, store=new_store(), progress=False, base=base)
    outside = flows.add(1)
    inside = flows.add(outside.output)
    with pytest.raises(
        DefinitionError,
        match=rf"{inside.uuid}.*refers to job {outside.uuid}.*allow_external_references",
    ):
        shoal.run(Flow([inside]), store=new_store(), progress=False, base=base)
    a, b = flows.add(1), flows.add(2)
    b.function_args = (a.output,)
    a.function_args = (b.output,)
    with pytest.raises(DefinitionError, match="dependency cycle"):
        shoal.run(Flow([a, b]), store=new_store(), progress=False, base=base)
    assert not list(base.iterdir()), "a refused flow left a run directory"


def test_an_additional_store_the_jobstore_lacks(base: Path) -> None:
    """As in jobflow, a job may name an additional store the JobStore lacks (every atomate2
    job names ``data``) as long as it saves nothing there; a value for it fails that job
    (after jobflow's own check), with a message that names the job, the store and the fix."""
    empty, full = flows.to_unknown_store(None), flows.to_unknown_store(1)
    theirs = jf_run_locally(Flow([copy.deepcopy(empty)]), store=new_store("data"), log=False)
    assert theirs[empty.uuid][1].output == {"data": None}
    run = shoal.run(Flow([empty, full]), store=new_store("data"), progress=False, base=base)
    assert run.result(empty) == {"data": None}
    with pytest.raises(shoal.TaskFailed) as err:
        run.result(full)
    assert re.search(
        rf"job to_unknown_store \({full.uuid}\) has output to save into the additional store "
        r"'big', which the JobStore does not have \(it has: data\).*additional_stores",
        str(err.value),
    ), str(err.value)


def test_expose_store_shows_every_finished_output(base: Path) -> None:
    """A job with ``expose_store`` sees the store as the manager's store holds it: every job
    that finished before it, not only those it refers to (here: one two steps up)."""
    first = flows.add(20, 22)
    second = flows.add(first.output, 1)
    third = flows.look_up(second.output, first.uuid)
    theirs, ours, run = twin(Flow([first, second, third]), base=base)
    assert run.result(third) == 42 == theirs.get_output(third.uuid)
    assert ours.get_output(third.uuid) == 42


def test_the_store_fills_while_the_run_goes(base: Path, tmp_path: Path) -> None:
    """The JobStore holds a job's output while the run still goes (copied every second from
    the run directory), not only when it ends."""
    gate = tmp_path / "gate"
    quick = flows.add(1, 2)
    held = flows.wait_for(str(gate))
    store = new_store()
    run = shoal.submit(Flow([quick, held]), store=store, progress=False, base=base, cpus=2)
    try:
        deadline = time.monotonic() + 60
        while store.query_one({"uuid": quick.uuid}) is None:
            assert time.monotonic() < deadline, "the quick job's output never reached the store"
            time.sleep(0.05)
        assert not run.done  # the held job holds the run open
        assert store.query_one({"uuid": held.uuid}) is None
    finally:
        gate.touch()
    run.wait(120)
    assert run.ok
    assert store.get_output(quick.uuid) == 3 and store.get_output(held.uuid) == str(gate)
    assert store.count() == 2


def test_external_references_read_the_store(base: Path) -> None:
    store = new_store()
    first = flows.add(1, 2)
    shoal.run(first, store=store, progress=False, base=base)
    later = flows.add(first.output, 10)
    run = shoal.run(later, store=store, progress=False, base=base, allow_external_references=True)
    assert run.result(later) == 13 and store.get_output(later.uuid) == 13


def test_on_the_dask_backend(base: Path, dask_cluster: Any) -> None:
    from shoal.backends.dask import DaskBackend

    flow, _ = flows.every_response()
    theirs = new_store()
    jf_run_locally(copy.deepcopy(flow), store=theirs, log=False)
    ours = new_store()
    backend = DaskBackend(address=dask_cluster.address)
    run = shoal.run(copy.deepcopy(flow), store=ours, progress=False, base=base, backend=backend)
    assert run.state == "succeeded"
    same(theirs, ours, flow)


def test_logs_find_a_job_by_uuid(base: Path) -> None:
    j = flows.fail("x")
    run = shoal.run(j, store=new_store(), progress=False, base=base)
    with Reader(run.dir) as r:
        row = r.find(j.uuid)
    assert row.name == f"fail {j.uuid}/1" and row.state == "failed"
    assert os.path.isdir(run.dir / "tasks" / str(row.id))


def test_resume_after_kill_fills_the_store_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """kill -9 of the driver mid-flow, then resume: the JobStore ends as jobflow's own run
    of the same flow leaves it."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    import cloudpickle

    flow = flows.slow_and_dynamic()
    saved = tmp_path / "flow.pickle"
    saved.write_bytes(cloudpickle.dumps(copy.deepcopy(flow)))
    base = tmp_path / "runs"
    base.mkdir()
    script = tmp_path / "driver.py"
    root = Path(__file__).resolve().parents[2]
    script.write_text(
        textwrap.dedent(
            f"""
            import pickle, sys
            sys.path[:0] = [{str(root)!r}, {str(root / "tests")!r}]
            import shoal
            from jobflow import JobStore
            from maggma.stores import MemoryStore
            flow = pickle.loads(open({str(saved)!r}, "rb").read())
            shoal.run(flow, store=JobStore(MemoryStore()), base={str(base)!r}, cpus=2,
                      progress=False)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        dbs = list(base.glob("*/shoal.db"))
        if dbs:
            try:
                with Reader(dbs[0].parent) as r:
                    done = r.counts().get("succeeded", 0)
            except Exception:
                done = 0
            if done >= 4:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the driver ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (rundir,) = base.glob("*/")
    with Reader(rundir) as r:
        assert 4 <= r.counts().get("succeeded", 0) < len(r.tasks()), "killed mid-flow"
    ours = new_store()
    run = shoal.jobflow.resume(rundir, store=ours, progress=False)
    assert run.state == "succeeded"
    theirs = new_store()
    jf_run_locally(copy.deepcopy(flow), store=theirs, log=False)
    same(theirs, ours, flow)


HEAVY = """
import json, os, sys, threading
sys.path.insert(0, sys.argv[1])
from jobflow import Flow, JobStore
from maggma.stores import MemoryStore
import shoal
import withjobflow.heavy as heavy  # says which process imported it

stop = threading.Event()
if sys.argv[3] == "thread":  # a thread of the driver's: it may not fork
    threading.Thread(target=stop.wait).start()
jobs = [heavy.parent_pid() for _ in range(4)]
run = shoal.run(Flow(jobs), store=JobStore(MemoryStore()), progress=False, base=sys.argv[2], cpus=2)
stop.set()
print(json.dumps({"driver": os.getpid(), "zygotes": sorted({run.result(j)[0] for j in jobs})}))
"""


@pytest.mark.parametrize("thread", [False, True])
def test_the_jobs_modules_are_imported_once_before_the_workers(
    base: Path, tmp_path: Path, thread: bool
) -> None:
    """A heavy module of the jobs (atomate2's take seconds) is imported once, not by each
    worker: the driver has it already (the flow was made from it), so the fork server is a
    fork of the driver and nobody imports it again; where the driver may not fork (another
    thread runs), the fork server, a new interpreter, imports it (the run option ``preload``)
    before it forks the workers. In an interpreter of its own: this one may have threads of
    other tests."""
    import json

    imports = tmp_path / "imports"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            HEAVY,
            str(Path(__file__).parent.parent),
            str(base),
            "thread" if thread else "",
        ],
        env={**os.environ, "HEAVY_IMPORTS": str(imports)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert len(got["zygotes"]) == 1  # every worker was forked by the one fork server
    pids = [int(x) for x in imports.read_text().split()]
    if thread:
        assert pids == [got["driver"], *got["zygotes"]]
    else:
        assert pids == [got["driver"]]


def test_on_missing_references_none_and_pass(base: Path) -> None:
    """A child of a failed job runs when its on_missing_references is NONE (it reads None) or
    PASS (it gets the reference itself); with ERROR it does not run; one below a job that
    never ran ends with it (as jobflow-remote leaves it)."""
    bad = flows.fail("x")
    ok = flows.add(1, 1)
    none = flows.collect_none(bad.output, ok.output)
    passed = flows.collect_pass(bad.output, ok.output)
    error = flows.add(bad.output, 1)
    below = flows.collect_none(error.output)
    flow = Flow([bad, ok, none, passed, error, below])
    theirs, ours, run = twin(copy.deepcopy(flow), base=base)
    assert run.result(none) == [None, 2]
    assert run.result(passed) == ["OutputReference", "int"]
    assert ours.get_output(none.uuid) == theirs.get_output(none.uuid)
    assert ours.get_output(passed.uuid) == theirs.get_output(passed.uuid)
    with Reader(run.dir) as r:
        assert r.find(error.uuid).state == "dep_failed"
        assert r.find(below.uuid).state == "dep_failed"  # run_locally would run it
        assert r.find(none.uuid).state == "succeeded"


def test_in_a_slurm_allocation(tmp_path: Path, slurm: None) -> None:
    """The flow with every Response field, run by a driver inside a real allocation (the
    Slurm backend: Python jobs on its persistent workers), leaves jobflow's JobStore."""
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "flow.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import copy, sys
            sys.path[:0] = [{str(root)!r}, {str(root / "tests")!r}]
            from jobflow import run_locally
            import shoal
            from withjobflow import flows
            from withjobflow.compare import new_store, same

            flow, _ = flows.every_response()
            ours, theirs = new_store(), new_store()
            run = shoal.run(copy.deepcopy(flow), store=ours, progress=False)
            run_locally(copy.deepcopy(flow), store=theirs, log=False)
            same(theirs, ours, flow)
            print("ok", run.state)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SHOAL_BACKEND"] = ""  # chosen from SLURM_JOB_ID inside the allocation
    p = subprocess.run(
        ["salloc", "-J", "shoal-jobflow", "-N1", "-n4", sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ok succeeded" in p.stdout, p.stdout
    (rundir,) = [d for d in tmp_path.iterdir() if (d / "shoal.db").exists()]
    with Reader(rundir) as r:
        assert r.meta()["backend"] == "slurm"
        workers = {a["worker"] for t in r.tasks() for a in r.attempts(t.id)}
    assert workers == {"localhost"}, workers  # the allocation's node
