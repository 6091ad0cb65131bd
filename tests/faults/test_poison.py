"""Poison pills (issue 15, point 2): data the driver must unpickle whose loading raises.

The driver unpickles the arguments of commands (to render them) and outputs that a
dependent uses when it resolves the references itself (commands; Python tasks that do not
follow the task they wait for, when the outputs are over 64 kB). Loading runs the user's
code (``__reduce__``) and imports their modules: any error there, ``SystemExit``,
``ModuleNotFoundError`` or ``RuntimeError``, fails that task and what depends on it, and
never the run (before, it ended the run, and every resume crashed at the same place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import shoal

ERRORS = ["RuntimeError", "ModuleNotFoundError", "SystemExit"]


def _boom(kind: str) -> Any:
    """Called when a Poison is unpickled: raises ``kind``."""
    if kind == "SystemExit":
        raise SystemExit(7)
    if kind == "ModuleNotFoundError":
        raise ModuleNotFoundError("No module named 'gone'", name="gone")
    raise RuntimeError("cannot rebuild this object")


class Poison:
    """Pickles fine; loading it raises ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (_boom, (self.kind,))


@shoal.task
def make(kind: str) -> dict[str, Any]:
    return {"pad": b"x" * 100_000, "bad": Poison(kind), "n": 1}  # over 64 kB


@shoal.task
def use(value: Any) -> str:
    return "ran"


@shoal.task
def fine(i: int) -> int:
    return i


echo = shoal.command("echo {x}")


@pytest.mark.parametrize("kind", ERRORS)
def test_poison_fails_its_tasks_not_the_run(tmp_path: Path, kind: str) -> None:
    with shoal.Workflow(f"poison-{kind}") as wf:
        src = make(kind)
        by_command = echo(x=src.out["n"])  # the driver renders it: unpickles the output
        # An isolated Python task does not follow: its large input is resolved in the driver
        by_python = use.options(isolate=True)(src.out["n"])
        after = use(by_python)  # fails because its dependency did
        direct = echo(x=Poison(kind))  # the command's own argument
        ok = [fine(i) for i in range(3)]
    run = wf.run(cpus=2, base=tmp_path)
    log = (run.dir / "shoal.log").read_text()
    assert run.state == "failed", log  # tasks failed; the run itself ended normally
    assert "internal error" not in log and "crashed" not in log
    assert [run.result(t) for t in ok] == [0, 1, 2]
    failures = {f["id"]: f for f in run.failures()}
    for t in (by_command, by_python, direct):
        tid = run._ids[t.key]
        assert tid in failures, (tid, failures)
        reason = failures[tid]["reason"]
        assert reason.startswith("cannot prepare the inputs: cannot load"), reason
        assert kind in reason, reason
    with pytest.raises(shoal.DependencyFailed):
        run.result(after)
