"""Random workflows, run for real, must end exactly as the reference interpreter says.

A fixed set of seeds (tests/e2e/randomflow.py explains the cases): each runs with shoal's
default prefetch and with ``prefetch=0``; a few with outside requests, with the driver killed
and resumed, on a loopback Dask cluster, and on Slurm where there is one. A failure names the
seed and gives the command that replays it (add ``--shrink`` for a small regression case).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .flowgen import generate
from .flowmodel import Case, Resp, Rule, T
from .interp import expect
from .randomflow import Setup, check, replay_line

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests.backends, for the Dask and Slurm fixtures
    sys.path.insert(0, str(ROOT))

# Seeds chosen to cover the features (tests/e2e/flowgen.py): 2 a strategy chain; 7 cancel,
# submit and retry rules; 10 a stop_run Response and a resume; 15 a cancel rule; 21 a stop
# rule and a resume.
BASIC = [2, 7, 10, 15, 21]
REQUESTS = [0, 3]
CRASH = [0, 1]
DASK = [1, 4]
PREFETCH = {"prefetch0": 0, "default": None}


def _check(seed: int, mode: str, tmp_path: Path, setup: Setup) -> None:
    case = generate(seed, mode)
    problems = check(case, tmp_path / "case", setup)
    if problems:
        shown = "\n  ".join(problems[:20])
        pytest.fail(
            f"seed {seed} ({mode}, prefetch {setup.prefetch}) disagrees with the reference:\n"
            f"  {shown}\nreplay: {replay_line(seed, mode, setup)} --shrink",
            pytrace=False,
        )


@pytest.mark.parametrize("prefetch", list(PREFETCH.values()), ids=list(PREFETCH))
@pytest.mark.parametrize("seed", BASIC)
def test_basic(seed: int, prefetch: int | None, tmp_path: Path) -> None:
    _check(seed, "basic", tmp_path, Setup(prefetch=prefetch))


@pytest.mark.parametrize("prefetch", list(PREFETCH.values()), ids=list(PREFETCH))
@pytest.mark.parametrize("seed", REQUESTS)
def test_outside_requests(seed: int, prefetch: int | None, tmp_path: Path) -> None:
    _check(seed, "requests", tmp_path, Setup(prefetch=prefetch))


@pytest.mark.parametrize("prefetch", list(PREFETCH.values()), ids=list(PREFETCH))
@pytest.mark.parametrize("seed", CRASH)
def test_driver_killed_and_resumed(seed: int, prefetch: int | None, tmp_path: Path) -> None:
    _check(seed, "crash", tmp_path, Setup(prefetch=prefetch))


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.backends.dask_fixtures import start_cluster, stop_cluster

    c = start_cluster(tmp_path_factory.mktemp("rf-dask"))
    try:
        yield str(c.scheduler_file)
    finally:
        stop_cluster(c)


@pytest.mark.parametrize("prefetch", list(PREFETCH.values()), ids=list(PREFETCH))
@pytest.mark.parametrize("seed", DASK)
def test_dask(seed: int, prefetch: int | None, dask_scheduler: str, tmp_path: Path) -> None:
    _check(seed, "dask", tmp_path, Setup(prefetch=prefetch, dask=dask_scheduler))


@pytest.mark.usefixtures("slurm")
@pytest.mark.parametrize("seed", [0])
def test_slurm(seed: int, tmp_path: Path) -> None:
    from tests.backends.slurm_fixtures import allocate, release

    job = allocate("-N1", "-n4")
    old = os.environ.get("SLURM_JOB_ID")
    os.environ["SLURM_JOB_ID"] = job
    try:
        _check(seed, "slurm", tmp_path, Setup(slurm=True))
    finally:
        if old is None:
            os.environ.pop("SLURM_JOB_ID", None)
        else:
            os.environ["SLURM_JOB_ID"] = old
        release(job)


# -- the reference interpreter itself, on hand-made cases ----------------------------------------
def test_interpreter_replace_chain_detour_and_skip() -> None:
    case = Case(
        0,
        [
            T("a", resp=Resp(replace=T("a.r", resp=Resp(replace=T("a.r.r"))))),
            T("b", deps=["a"]),
            T("c", resp=Resp(detour=[T("c.d0", acts=["raise:ValueError"])])),
            T("d", deps=["c"]),
            T("e", resp=Resp(stop_children=True, add=[T("e.a0", deps=["^"])])),
            T("f", deps=["e"]),
            T("g", deps=["f", "d"]),
        ],
    )
    exp = expect(case)
    assert exp.states["b"] == {"succeeded"}
    assert exp.results["a"] == exp.results["a.r.r"]
    assert exp.states["d"] == {"dep_failed"}
    assert exp.states["f"] == {"skipped"}
    assert exp.states["g"] == {"skipped", "dep_failed"}  # whichever reaches it first
    assert exp.states["e.a0"] == {"succeeded"}
    assert exp.run == {"failed"}


def test_interpreter_retries_and_stop() -> None:
    case = Case(
        0,
        [
            T("flaky", acts=["kill", "ok"], retries=1, retry_on=["crash"]),
            T("wrong", acts=["exit:3", "ok"], retries=1, retry_on=["timeout"]),
            T("slow", acts=["sleep:1.5"], timeout=0.4, escalate=25.0, retries=1),
            T("stop", after=["flaky", "wrong", "slow"]),
            T("later", after=["stop"]),
        ],
        rules=[Rule("stop", "stop")],
    )
    exp = expect(case)
    assert exp.states["flaky"] == {"succeeded"} and exp.execs["flaky"] == 2
    assert exp.states["wrong"] == {"failed"} and exp.execs["wrong"] == 1
    assert exp.states["slow"] == {"succeeded"} and exp.execs["slow"] == 2
    assert exp.states["stop"] == {"dep_failed"}


# -- regressions: shrunk cases the random tests found --------------------------------------------
@pytest.mark.parametrize("prefetch", list(PREFETCH.values()), ids=list(PREFETCH))
def test_regression_seed_3018(prefetch: int | None, tmp_path: Path) -> None:
    """A task that kills its own worker (t30) must fail alone; a tiny task queued behind it
    on that worker (t14, the same shape) was charged with its death (fast path)."""
    case = Case(
        seed=3018,
        tasks=[
            T(name="t0", cpus=2),
            T(name="t6", priority=5),
            T(name="t14", cpus=2),
            T(name="t15", priority=1, tags=["b", "c"]),
            T(name="t30", acts=["kill", "kill", "ok"], cpus=2),
        ],
        cpus=3,
    )
    assert check(case, tmp_path, Setup(prefetch=prefetch)) == []


def test_regression_command_stdout_is_that_of_its_last_attempt(tmp_path: Path) -> None:
    """Found by the crash cases: a command that ran again (retried, or lost with the driver)
    had the output of its earlier attempts in its ``stdout`` too."""
    import shoal

    cmd = shoal.command("echo attempt $SHOAL_ATTEMPT; test $SHOAL_ATTEMPT -ge 2", retries=1)
    with shoal.Workflow("stdout") as wf:
        t = cmd.options(name="c")()
    run = wf.run(base=str(tmp_path), cpus=1, progress=False)
    assert run.result(t)["stdout"] == "attempt 2\n"
