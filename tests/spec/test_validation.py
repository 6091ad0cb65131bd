"""Checking workflows at the boundary: every bad input is refused before anything starts.

Each refusal test asserts the words of the message (what is wrong, the names and numbers
involved, how to fix it) and that no run directory was created: nothing half-started. The
positive tests run small workflows to check that references wire the graph and resolve.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import shoal
from shoal import DefinitionError, ResourceError, TaskFailed, Workflow
from shoal.spec import parse_memory
from shoal.store import Reader


# -- module-level tasks and types (workers import them by reference) ------------------------------
@shoal.task
def step(x: Any = None) -> Any:
    return x


@shoal.task
def produce(v: Any) -> Any:
    return v


@shoal.task
def echo(v: Any) -> Any:
    return v


@dataclass
class Pair:
    left: Any
    right: Any


class Point(NamedTuple):
    x: Any
    y: Any


def nothing_started(base: Path) -> None:
    """No run directory (nor anything else) was created under ``base``."""
    assert list(base.iterdir()) == [], f"a refused workflow left {list(base.iterdir())}"


def named(name: str) -> shoal.spec.TaskFactory[Any, Any]:
    return step.options(name=name)


# -- references and cycles ------------------------------------------------------------------------
def test_reference_to_task_outside_the_workflow(base: Path) -> None:
    outside = named("prepare")(1)  # no workflow open: belongs to none
    with Workflow("eos") as wf:
        named("consume")(outside.out)
    with pytest.raises(DefinitionError) as info:
        wf.run(base=base)
    msg = str(info.value)
    assert "'consume'" in msg and "'prepare'" in msg, msg
    assert "'eos'" in msg, msg
    assert "wf.add" in msg, msg  # says how to fix it
    nothing_started(base)


def _cycle_in(msg: str, ids: bool = False) -> list[str]:
    m = re.search(r"cycle: (.+? -> .+?)\.(?:\s|$)", msg)
    assert m, f"no 'x -> y -> x' cycle listed in: {msg}"
    labels = m.group(1).split(" -> ")
    assert labels[0] == labels[-1], f"the listed cycle does not close: {m.group(1)}"
    # Each task is listed as "name (#id)"; the ids tell tasks of one name apart.
    if ids:
        return labels[:-1]
    return [re.sub(r" \(#\d+\)$", "", label) for label in labels[:-1]]


def _rotated_to(names: list[str], first: str) -> list[str]:
    i = names.index(first)
    return names[i:] + names[:i]


def test_cycle_made_with_after_lists_the_cycle(base: Path) -> None:
    with Workflow("loop") as wf:
        a = named("a")()
        b = named("b")().after(a)
        c = named("c")().after(b)
        a.after(c)
        named("bystander")()
    with pytest.raises(DefinitionError, match="cycle") as info:
        wf.run(base=base)
    # In execution order a -> b -> c -> a; the listing may start anywhere on the cycle.
    assert _rotated_to(_cycle_in(str(info.value)), "a") == ["a", "b", "c"], str(info.value)
    assert "bystander" not in str(info.value)
    nothing_started(base)


def test_cycle_behind_a_data_dependency(base: Path) -> None:
    with Workflow("loop2") as wf:
        first = named("first")()
        second = named("second")(first.out)
        first.after(second)
    with pytest.raises(DefinitionError, match="cycle") as info:
        wf.run(base=base)
    assert sorted(_cycle_in(str(info.value))) == ["first", "second"]
    nothing_started(base)


def test_task_after_itself_is_a_cycle(base: Path) -> None:
    with Workflow("selfish") as wf:
        me = named("me")()
        me.after(me)
    with pytest.raises(DefinitionError, match="cycle") as info:
        wf.run(base=base)
    assert _cycle_in(str(info.value)) == ["me"]
    nothing_started(base)


def test_cycle_among_tasks_of_one_name_tells_them_apart(base: Path) -> None:
    """Tasks of one function share a name; the listed cycle must still say which is which."""
    with Workflow("same") as wf:
        one = step(1)
        two = step(2).after(one)
        one.after(two)
    with pytest.raises(DefinitionError, match="cycle") as info:
        wf.run(base=base)
    cycle = _cycle_in(str(info.value), ids=True)
    assert len(cycle) == 2, str(info.value)
    assert len(set(cycle)) == 2, f"the two tasks in the cycle look the same: {info.value}"
    nothing_started(base)


# -- impossible requests --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_", "asks", "node"),
    [
        ({"cpus": 64}, "64 cores", "4 cores"),
        ({"gpus": 1}, "1 GPU", "0 GPUs"),
        ({"ranks": 3, "cpus": 2}, "3 ranks", "4 cores"),
    ],
    ids=["cpus", "gpus", "ranks-x-cpus"],
)
def test_request_no_node_can_satisfy(
    base: Path, request_: dict[str, int], asks: str, node: str
) -> None:
    with Workflow("big") as wf:
        named("small")()
        named("huge").options(**request_)()
    with pytest.raises(ResourceError) as info:
        wf.run(base=base, cpus=4, gpus=0)
    msg = str(info.value)
    assert "'huge'" in msg, msg
    assert asks in msg, msg
    assert node in msg, msg
    if "ranks" in request_:
        assert "2 cores" in msg, msg  # the per-rank size is named too
    nothing_started(base)


def test_resource_error_is_a_definition_error() -> None:
    assert issubclass(ResourceError, DefinitionError)


# -- things that cannot travel to a worker --------------------------------------------------------
def test_unpicklable_function_is_named(base: Path) -> None:
    lock = threading.Lock()

    def guarded(x: int) -> int:
        with lock:
            return x

    with Workflow("locked") as wf:
        shoal.task(guarded)(1)
    with pytest.raises(DefinitionError, match="cannot be serialized") as info:
        wf.run(base=base)
    assert "guarded" in str(info.value)
    nothing_started(base)


@pytest.mark.parametrize(
    ("args", "kwargs", "label"),
    [
        (((x for x in range(3)),), {}, "argument 1"),
        ((), {"v": threading.Lock()}, "argument 'v'"),
        ((1, [threading.Lock()]), {}, "argument 2"),
    ],
    ids=["generator", "lock-kwarg", "lock-in-list"],
)
def test_unserializable_argument_is_named(
    base: Path, args: tuple[Any, ...], kwargs: dict[str, Any], label: str
) -> None:
    @shoal.task
    def consume(*a: Any, **k: Any) -> None:
        return None

    with Workflow("args") as wf:
        consume(*args, **kwargs)
    with pytest.raises(DefinitionError, match="cannot be serialized") as info:
        wf.run(base=base)
    msg = str(info.value)
    assert label in msg, msg
    assert "'consume'" in msg, msg
    nothing_started(base)


# -- options --------------------------------------------------------------------------------------
BAD_OPTIONS = [
    ({"cpus": 0}, "cpus", ">= 1"),
    ({"cpus": "2"}, "cpus", "integer"),
    ({"cpus": 1.5}, "cpus", "integer"),
    ({"gpus": -1}, "gpus", ">= 0"),
    ({"ranks": 0}, "ranks", ">= 1"),
    ({"memory": "lots"}, "memory", "'lots'"),
    ({"memory": -5}, "memory", "negative"),
    ({"timeout": -1}, "timeout", "positive"),
    ({"timeout": 0}, "timeout", "positive"),
    ({"priority": "high"}, "priority", "integer"),
    ({"estimate": 0}, "estimate", "positive number of seconds"),
    ({"estimate": "long"}, "estimate", "'long'"),
    ({"estimate": float("inf")}, "estimate", "positive"),
    ({"tags": [1]}, "tags", "string"),
    ({"cpu": 2}, "cpu", "unknown option"),
]
BAD_IDS = [f"{next(iter(o))}={next(iter(o.values()))!r}" for o, _, _ in BAD_OPTIONS]


def _f(x: int = 0) -> int:
    return x


@pytest.mark.parametrize(("options", "option", "words"), BAD_OPTIONS, ids=BAD_IDS)
@pytest.mark.parametrize("where", ["task", "options", "command"])
def test_bad_option_is_named(
    base: Path, where: str, options: dict[str, Any], option: str, words: str
) -> None:
    with pytest.raises(DefinitionError) as info:
        with Workflow("opts") as wf:
            if where == "task":
                shoal.task(_f, **options)()
            elif where == "options":
                shoal.task(_f).options(**options)()
            else:
                shoal.command("true", **options)()
        wf.run(base=base)
    msg = str(info.value)
    assert re.search(rf"\b{option}\b", msg), msg
    assert words in msg, msg
    nothing_started(base)


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(DefinitionError, match="unknown option") as info:
        shoal.task(_f, cpu=2)
    assert "cpus" in str(info.value)


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("4GB", 4096),
        ("512MB", 512),
        ("512M", 512),
        ("2GiB", 2048),
        ("1.5G", 1536),
        ("1TB", 1024 * 1024),
        (100, 100),
        ("100", 100),
        (None, 0),
    ],
)
def test_memory_strings_parse(text: Any, mb: int) -> None:
    assert parse_memory(text) == mb


def test_memory_option_is_stored_in_mb() -> None:
    assert shoal.task(_f, memory="4GB").defaults.memory == 4096
    assert shoal.task(_f).options(memory="512MB").defaults.memory == 512


def test_options_copy_leaves_the_original_factory_alone() -> None:
    relax = shoal.task(_f)
    bigger = relax.options(cpus=2)
    assert bigger is not relax
    assert relax.defaults.cpus == 1
    assert bigger.defaults.cpus == 2
    assert relax(1).options.cpus == 1
    assert bigger(1).options.cpus == 2
    again = bigger.options(memory="1GB")  # options compose, keeping earlier changes
    assert (again.defaults.cpus, again.defaults.memory) == (2, 1024)
    assert bigger.defaults.memory == 0


def test_command_options_copy_leaves_the_original_alone() -> None:
    md = shoal.command("echo {T}")
    wide = md.options(cpus=3)
    assert md.defaults.cpus == 1
    assert wide.defaults.cpus == 3
    assert wide(T=1).options.cpus == 3


# -- command templates ----------------------------------------------------------------------------
def test_command_missing_placeholder_value(base: Path) -> None:
    md = shoal.command("lmp -in in.melt -var T {T} -var P {P}")
    with pytest.raises(DefinitionError) as info:
        with Workflow("md") as wf:
            md(T=300)
        wf.run(base=base)
    msg = str(info.value)
    assert "'P'" in msg and "P=" in msg, msg
    assert "lmp -in in.melt" in msg, msg
    nothing_started(base)


def test_command_unknown_placeholder(base: Path) -> None:
    md = shoal.command("lmp -var T {T}")
    with pytest.raises(DefinitionError, match="no placeholder") as info:
        with Workflow("md") as wf:
            md(T=300, X=1)
        wf.run(base=base)
    msg = str(info.value)
    assert "'X'" in msg, msg
    assert "'T'" in msg, msg  # lists the placeholders it does have
    nothing_started(base)


@pytest.mark.parametrize("template", ["echo {}", "echo {0}", "echo {T} {1}"])
def test_command_positional_placeholder(template: str) -> None:
    with pytest.raises(DefinitionError, match="positional placeholder") as info:
        shoal.command(template)
    assert template in str(info.value)


def test_command_values_must_be_named() -> None:
    md = shoal.command("echo {T}")
    with pytest.raises(DefinitionError, match="by name"):
        md(300)


def test_command_malformed_template() -> None:
    with pytest.raises(DefinitionError, match="malformed"):
        shoal.command("echo {T")


# -- workflows ------------------------------------------------------------------------------------
def test_empty_workflow(base: Path) -> None:
    with pytest.raises(DefinitionError, match="'idle' has no tasks"):
        Workflow("idle").run(base=base)
    with Workflow("shell") as outer:
        Workflow("hollow")
    with pytest.raises(DefinitionError, match="'shell' has no tasks"):
        outer.run(base=base)
    nothing_started(base)


@pytest.mark.parametrize("name", ["a/b", "a\\b", "", "   "])
def test_bad_workflow_name(base: Path, name: str) -> None:
    with pytest.raises(DefinitionError) as info:
        with Workflow(name) as wf:
            step()
        wf.run(base=base)
    msg = str(info.value)
    if name.strip():
        assert repr(name) in msg and "run directory" in msg, msg
    else:
        assert "name" in msg, msg
    nothing_started(base)


def test_ref_has_no_truth_value() -> None:
    t = step()
    with pytest.raises(DefinitionError, match="truth value"):
        if t.out:
            pass
    with pytest.raises(DefinitionError, match="truth value"):
        bool(t.out["energy"])


def test_ref_cannot_be_iterated() -> None:
    t = step()
    with pytest.raises(DefinitionError, match="cannot be iterated"):
        _a, _b = t.out


def test_workflow_add_refuses_other_things() -> None:
    with pytest.raises(DefinitionError, match="add"):
        Workflow("w").add(step)  # a factory, not a task


# -- references wire the graph and resolve --------------------------------------------------------
def test_references_nested_in_containers(base: Path) -> None:
    with Workflow("nest") as wf:
        p = [produce(i) for i in range(7)]
        value = {
            "list": [p[0].out, "x"],
            "tuple": (p[1].out,),
            "dict": {"k": p[2].out},
            "dataclass": Pair(p[3].out, 7),
            "namedtuple": Point(p[4].out, "y"),
            "deep": [Pair((p[5].out,), {"z": [p[6].out]})],
            "plain": [1, (2, 3)],
        }
        c = echo(value)
    assert {d.key for d in c.deps} == {t.key for t in p}
    run = wf.run(base=base)
    got = run.result(c)
    assert got == {
        "list": [0, "x"],
        "tuple": (1,),
        "dict": {"k": 2},
        "dataclass": Pair(3, 7),
        "namedtuple": Point(4, "y"),
        "deep": [Pair((5,), {"z": [6]})],
        "plain": [1, (2, 3)],
    }
    assert type(got["namedtuple"]) is Point
    with Reader(run.dir) as r:
        assert sorted(r.find(c.id).deps) == sorted(t.id for t in p)  # type: ignore[type-var]
    # The arguments as written are left alone: they still hold references.
    assert isinstance(value["dataclass"].left, shoal.Ref)


def test_output_paths_resolve(base: Path) -> None:
    with Workflow("paths") as wf:
        t = produce({"a": [10, 20], "b": Pair(left="L", right={"r": 3})})
        first = echo(t.out["a"][0])
        second = echo(t["a"][1])
        attr = echo(t.out["b"].left)
        deeper = echo(t.out["b"].right["r"])
    run = wf.run(base=base)
    assert run.ok
    assert [run.result(x) for x in (first, second, attr, deeper)] == [10, 20, "L", 3]


@pytest.mark.parametrize(
    ("select", "path"),
    [
        (lambda t: t.out["missing"], "['missing']"),
        (lambda t: t.out["a"][5], "['a'][5]"),
        (lambda t: t.out.nope, ".nope"),
    ],
    ids=["key", "index", "attr"],
)
def test_missing_selection_fails_the_dependent_task(base: Path, select: Any, path: str) -> None:
    with Workflow("miss") as wf:
        t = produce({"a": [10]})
        bad = echo(select(t))
        ok = echo(t.out["a"][0])
    run = wf.run(base=base)
    assert run.result(t) == {"a": [10]}
    assert run.result(ok) == 10
    with pytest.raises(TaskFailed) as info:
        run.result(bad)
    assert path in str(info.value), str(info.value)
    assert not run.ok


@pytest.mark.parametrize("size", [10, 200_000], ids=["carried", "resolved-by-the-driver"])
def test_selections_of_small_and_large_outputs(base: Path, size: int) -> None:
    """Small outputs travel with the dependent's arguments and are resolved where it runs;
    large ones (over outputs.CARRY bytes) are resolved by the driver, so only the selected part
    travels. Both give the same values and the same error for a missing part."""
    blob = "x" * size
    with Workflow("sizes") as wf:
        t = produce({"blob": blob, "n": [1, 2]})
        part = echo(t.out["n"][1])
        whole = echo(t.out["blob"])
        bad = echo(t.out["nope"])
    run = wf.run(base=base)
    assert run.result(part) == 2
    assert run.result(whole) == blob
    with pytest.raises(TaskFailed) as info:
        run.result(bad)
    text = str(info.value)
    assert "cannot prepare the inputs" in text and "['nope']" in text, text
    assert f"output of 'produce' (#{t.id})" in text, text


def test_outputs_beyond_the_drivers_budget_come_back_from_the_store(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver keeps only the newest outputs that dependents use (outputs.KEPT bytes); an
    older one is read back from the store, with the same value."""
    from shoal.runtime import outputs
    from shoal.store.writer import Writer

    monkeypatch.setattr(outputs, "KEPT", 1)  # keep one output at a time
    read_back: list[int] = []
    result = Writer.result

    def counted(self: Writer, task: int) -> bytes | None:
        read_back.append(task)
        return result(self, task)

    monkeypatch.setattr(Writer, "result", counted)
    with Workflow("budget") as wf:
        firsts = [produce({"i": i}) for i in range(6)]
        later = [echo(t.out["i"]) for t in firsts]
        total = echo([t.out for t in later])
    run = wf.run(base=base, cpus=1)
    assert run.result(total) == list(range(6))
    assert read_back, "no output was read back from the store: the budget was not exercised"


def test_handle_equals_its_out(base: Path) -> None:
    with Workflow("handle") as wf:
        t = produce({"v": 1})
        via_handle = echo(t)
        via_out = echo(t.out)
        in_list = echo([t, t.out])
    assert [d.key for d in via_handle.deps] == [t.key]
    run = wf.run(base=base)
    assert run.result(via_handle) == run.result(via_out) == {"v": 1}
    assert run.result(in_list) == [{"v": 1}, {"v": 1}]


def test_nested_workflows_flatten(base: Path) -> None:
    with Workflow("outer") as outer:
        a = produce(1)
        with Workflow("inner") as inner:
            b = produce(2)
            c = echo([a.out, b.out])
        d = echo(c.out)
    outer.add(inner)  # adding again changes nothing
    assert outer.tasks == [a, b, c, d]
    assert inner.tasks == [b, c]
    assert len(outer) == 4
    run = outer.run(base=base)
    assert run.result(d) == [1, 2]
    assert run.status()["total"] == 4


def test_task_made_outside_a_workflow_can_be_added(base: Path) -> None:
    t = produce(5)
    u = echo(t.out)
    wf = Workflow("later").add(t, u, t)
    assert wf.tasks == [t, u]
    run = wf.run(base=base)
    assert run.result(u) == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda: shoal.task(_f, cpu=2),
        lambda: shoal.task(cpu=2)(_f),
        lambda: shoal.task(_f).options(cpu=2),
        lambda: shoal.command("echo {x}", cpu=2),
        lambda: shoal.command("echo {x}").options(cpu=2),
    ],
    ids=["task(fn)", "@task(...)", ".options", "command", "command.options"],
)
def test_misspelt_task_options_get_the_closest_name_like_run_options(make: Any) -> None:
    with pytest.raises(DefinitionError, match=r"unknown option 'cpu'; did you mean 'cpus'\?"):
        make()
    with pytest.raises(DefinitionError, match=r"unknown run option 'cpu'; did you mean 'cpus'\?"):
        Workflow("w").run(cpu=2)
