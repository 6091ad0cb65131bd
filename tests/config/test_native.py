"""shoal's own config format: what it maps to, what it refuses, and what a run does."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

import shoal
from shoal.config import load
from shoal.config.build import workflow
from shoal.errors import DefinitionError

from .helpers import write

SWEEP = """\
name: screen
resources: {cpus: 4}
groups:
  relax:
    command: "echo relax {element} {a}"
    sweep:
      element: [Cu, Ag, Au]
      a: "linspace(3.5, 4.1, 4)"
    cpus: 2
    timeout: 60
    duration: 90
    tags: [dft]
  md:
    command: "echo md {T} {P}"
    sweep: {T: "range(300, 1200, 300)", P: [1, 2, 3]}
    zip: [[T, P]]
    ranks: 2
    after: relax
"""

SWEEP_TOML = """\
name = "screen"
[resources]
cpus = 4
[groups.relax]
command = "echo relax {element} {a}"
cpus = 2
timeout = 60
duration = 90
tags = ["dft"]
[groups.relax.sweep]
element = ["Cu", "Ag", "Au"]
a = "linspace(3.5, 4.1, 4)"
[groups.md]
command = "echo md {T} {P}"
sweep = {T = "range(300, 1200, 300)", P = [1, 2, 3]}
zip = [["T", "P"]]
ranks = 2
after = "relax"
"""


def test_groups_map_to_tasks_with_commands_and_resources(tmp_path: Path) -> None:
    ens = load(write(tmp_path, "s.yaml", SWEEP))
    assert ens.name == "screen" and ens.size == 12 + 3
    wf = workflow(ens)
    tasks = wf.tasks
    assert len(tasks) == 15
    relax = [t for t in tasks if "relax" in t.options.tags]
    md = [t for t in tasks if "md" in t.options.tags]
    assert len(relax) == 12 and len(md) == 3
    assert relax[0].options.tags == ("relax", "dft")
    assert (relax[0].options.cpus, relax[0].options.timeout) == (2, 60.0)
    assert relax[0].options.estimate == 90.0  # duration: expected seconds, the estimate
    assert md[0].options.estimate is None
    assert {t.options.ranks for t in md} == {2}
    rendered = [ens.groups["relax"].command_line(ens.groups["relax"].row(i), i) for i in range(4)]
    assert rendered == [
        "echo relax Cu 3.5",
        "echo relax Cu 3.7",
        "echo relax Cu 3.9",
        "echo relax Cu 4.1",
    ]
    assert [t.kwargs for t in md] == [{"T": 300, "P": 1}, {"T": 600, "P": 2}, {"T": 900, "P": 3}]
    assert all(set(t.after_tasks) == set(relax) for t in md)


def test_yaml_json_and_toml_mean_the_same(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(SWEEP)
    plans = []
    for name, text in [
        ("s.yaml", SWEEP),
        ("s.json", json.dumps(data)),
        ("s.toml", SWEEP_TOML),
    ]:
        p = load(write(tmp_path, name, text)).plan()
        p.pop("file")
        plans.append(p)
    assert plans[0] == plans[1] == plans[2]
    assert plans[0]["groups"][0]["core_hours"] == pytest.approx(12 * 90 * 2 / 3600)


def test_plan_counts_first_commands_and_core_hours(tmp_path: Path) -> None:
    p = load(write(tmp_path, "s.yaml", SWEEP)).plan(first=2)
    relax, md = p["groups"]
    assert (relax["tasks"], md["tasks"]) == (12, 3)
    assert relax["first"] == ["echo relax Cu 3.5", "echo relax Cu 3.7"]
    assert relax["each"] == "2 cores" and md["each"] == "2 ranks × (1 core)"
    assert md["after"] == ["relax"]
    assert p["core_hours"] == pytest.approx(0.6)


def test_set_overrides_a_group_key_and_a_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", SWEEP)
    ens = load(path, ["relax.cpus=1", "md.sweep.P=[5, 6, 7]", "resources.cpus=8", "name=x"])
    assert ens.name == "x" and ens.resources["cpus"] == 8
    assert ens.groups["relax"].task_options({}, 0).cpus == 1
    assert [r["P"] for r in ens.groups["md"].rows()] == [5, 6, 7]
    with pytest.raises(DefinitionError, match=r"'relx' is neither.*did you mean 'relax'"):
        load(path, ["relx.cpus=1"])
    with pytest.raises(DefinitionError, match=r"from --set relax\.cpus=many"):
        load(path, ["relax.cpus=many"])
    with pytest.raises(DefinitionError, match="KEY=VALUE"):
        load(path, ["relax.cpus"])


BAD = [
    (
        "unknown key",
        "groups:\n  a:\n    command: echo\n    cpu: 2\n",
        r"x.yaml:4: groups.a.cpu: unknown key 'cpu'; did you mean 'cpus'\?",
    ),
    (
        "wrong type",
        "groups:\n  a:\n    command: echo\n    cpus: two\n",
        r"x.yaml:4: groups.a.cpus: must be a number, or '\{param\}'",
    ),
    (
        "wrong type (integer)",
        "groups:\n  a:\n    command: echo\n    count: 1.5\n",
        r"x.yaml:4: groups.a.count: must be an integer \(got 1.5\)",
    ),
    (
        "zip lengths",
        "groups:\n  a:\n    command: echo {T} {P}\n    sweep: {T: [1, 2, 3], P: [1, 2]}\n"
        "    relation: zip\n",
        r"x.yaml:4: groups.a.sweep: zipped parameters must have the same number of values, "
        r"but T has 3, P has 2",
    ),
    (
        "unknown group",
        "groups:\n  a:\n    command: echo\n  b:\n    command: echo\n    after: [c]\n",
        r"x.yaml:6: groups.b.after: no group named 'c'",
    ),
    (
        "unknown group in a rule",
        "groups:\n  a:\n    command: echo\nrules:\n  - on: task-failed\n    group: aa\n"
        "    retry: true\n",
        r"x.yaml:6: rules\[0\].group: no group named 'aa'; did you mean 'a'\?",
    ),
    (
        "unsafe expression",
        "groups:\n  a:\n    command: echo {T}\n    sweep:\n      T: \"exec('import os')\"\n",
        r"x.yaml:5: groups.a.sweep.T: unknown function 'exec'",
    ),
    (
        "request larger than any node",
        "resources: {cpus: 4}\ngroups:\n  a:\n    command: echo\n    cpus: 2\n    ranks: 3\n",
        r"x.yaml:6: groups.a.ranks: group 'a' can never run: it asks for 3 ranks × \(2 cores\), "
        r"but the only node is node '" + re.escape(socket.gethostname()) + "': 4 cores",
    ),
    (
        "placeholder without a parameter",
        "groups:\n  a:\n    command: echo {T}\n",
        r"x.yaml:3: groups.a.command: the command uses \{T\}, but group 'a' has no parameter 'T'",
    ),
    (
        "each with other counts",
        "groups:\n  a:\n    command: echo {x}\n    sweep: {x: [1, 2]}\n  b:\n    command: echo\n"
        "    each: a\n    sweep: {y: [1, 2, 3]}\n",
        r"x.yaml:7: groups.b.each: .* 'b' has 3 tasks and 'a' has 2",
    ),
    (
        "cycle",
        "groups:\n  a:\n    command: echo\n    after: b\n  b:\n    command: echo\n    after: a\n",
        r"x.yaml:2: groups.a: the groups wait for each other in a cycle: a -> b -> a",
    ),
    (
        "duplicate key",
        "groups:\n  a:\n    command: echo\n    command: ls\n",
        r"x.yaml:4: not valid YAML: duplicate key 'command' \(first on line 3\)",
    ),
    (
        "neither command nor function",
        "groups:\n  a:\n    cpus: 1\n",
        r"x.yaml:2: groups.a: give a group either command",
    ),
    (
        "unknown trigger",
        "groups:\n  a:\n    command: echo\nrules:\n  - on: task-faild\n    stop: now\n",
        r"x.yaml:5: rules\[0\].on: must be one of .*did you mean 'task-failed'\?",
    ),
    (
        "two actions",
        "groups:\n  a:\n    command: echo\nrules:\n  - on: start\n    stop: now\n    submit: a\n",
        r"x.yaml:5: rules\[0\]: a rule does one thing",
    ),
    (
        "a parameter called index",
        "groups:\n  a:\n    command: echo {index}\n    sweep: {index: [1, 2]}\n",
        r"x.yaml:4: groups.a.sweep: a parameter may not be called 'index'",
    ),
    (
        "a dotted placeholder",
        "groups:\n  a:\n    command: echo {x.y}\n    sweep: {x: [1]}\n",
        r"x.yaml:3: groups.a.command: \{x.y\}: a placeholder is a plain parameter name",
    ),
    (
        "a malformed template",
        "groups:\n  a:\n    command: echo {x\n    sweep: {x: [1]}\n",
        r"x.yaml:3: groups.a.command: 'echo \{x' is malformed",
    ),
    (
        "memory naming no parameter",
        "groups:\n  a:\n    command: echo\n    memory: '{mm}'\n",
        r"x.yaml:4: groups.a.memory: must be a number, or '\{param\}'",
    ),
    (
        "a null value",
        "groups:\n  a:\n    command: echo {x}\n    sweep:\n      x: null\n",
        r"x.yaml:5: groups.a.sweep.x: no value \(null\)",
    ),
    (
        "relation zip and zip lists",
        "groups:\n  a:\n    command: echo {x} {y}\n    sweep: {x: [1], y: [2]}\n"
        "    relation: zip\n    zip: [[x, y]]\n",
        r"x.yaml:6: groups.a.zip: give relation: zip .* or zip: \[\[...\]\] lists, not both",
    ),
    (
        "a workdir placeholder without a parameter",
        "groups:\n  a:\n    command: echo {x}\n    sweep: {x: [1]}\n    workdir: 'runs/{y}'\n",
        r"x.yaml:5: groups.a.workdir: 'runs/\{y\}' uses \{y\}",
    ),
    (
        "a bad option value names its key",
        "groups:\n  a:\n    command: echo\n    cpus: 1\n    timeout: -5\n",
        r"x.yaml:5: groups.a.timeout: group 'a': timeout must be a positive number",
    ),
    (
        "duplicate keys in JSON",
        None,
        r"x.json: duplicate key 'a'",
    ),
    (
        "function that does not exist",
        "groups:\n  a:\n    function: 'json:dumpz'\n",
        r"x.yaml:3: groups.a.function: module 'json' has no 'dumpz'; did you mean 'dumps?'\?",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_line_and_key(
    tmp_path: Path, case: str, text: str, message: str
) -> None:
    if text is None:
        path = write(tmp_path, "x.json", '{"groups": {"a": {"command": "x"}, "a": {}}}')
    else:
        path = write(tmp_path, "x.yaml", text)
    with pytest.raises(DefinitionError, match=message):
        load(path)


def test_bad_toml_and_json_name_the_line(tmp_path: Path) -> None:
    t = write(tmp_path, "x.toml", '[groups.a]\ncommand = "echo"\ncpu = 2\n')
    with pytest.raises(DefinitionError, match=r"x.toml:3: groups.a.cpu: unknown key 'cpu'"):
        load(t)
    j = write(
        tmp_path,
        "x.json",
        '{\n "groups": {\n  "a": {\n   "command": "echo",\n   "timeout": "soon"\n  }\n }\n}\n',
    )
    with pytest.raises(DefinitionError, match=r"x.json:5: groups.a.timeout"):
        load(j)
    broken = write(tmp_path, "y.json", '{\n "groups": {\n')
    with pytest.raises(DefinitionError, match=r"y.json:3: not valid JSON"):
        load(broken)


def test_several_problems_are_all_listed_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.yaml",
        "groups:\n  a:\n    command: echo\n    cpu: 2\n    count: x\n    tagz: [a]\n",
    )
    with pytest.raises(DefinitionError) as err:
        load(path)
    lines = str(err.value).splitlines()
    assert [line.split(":")[1] for line in lines] == ["4", "5", "6"]


def test_set_reaches_list_items_and_yaml_merge_keys_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "x-base: &base {command: 'echo {T}', cpus: 1, timeout: 60}\n"
        "groups:\n  a:\n    <<: *base\n    sweep: {T: [1, 2]}\n    cpus: 2\n"
        "rules:\n  - on: task-failed\n    retry: {attempts: 2}\n",
    )
    ens = load(path, ["rules.0.retry.attempts=5"])
    opts = ens.groups["a"].task_options({}, 0)
    assert (opts.cpus, opts.timeout) == (2, 60.0)  # merged, and overridden where written
    assert ens.rules[0].attempts == 5


def test_swept_memory_and_scaled_cpus_on_retry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "groups:\n  a:\n    command: 'echo {m}'\n    sweep: {m: [512, 1024]}\n"
        "    memory: '{m}'\nrules:\n  - on: task-failed\n    retry: {cpus: x2}\n",
    )
    ens = load(path)
    assert [t.options.memory for t in workflow(ens).tasks] == [512, 1024]
    assert ens.rules[0].retry == {"cpus": ("scale", 2.0)}


def test_swept_resources_follow_the_parameter(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.yaml",
        "resources: {cpus: 4}\ngroups:\n  a:\n    command: echo {n}\n"
        "    sweep: {n: [1, 2, 4]}\n    cpus: '{n}'\n",
    )
    ens = load(path)
    assert [t.options.cpus for t in workflow(ens).tasks] == [1, 2, 4]
    too_big = write(tmp_path, "y.yaml", path.read_text().replace("[1, 2, 4]", "[1, 8]"))
    with pytest.raises(
        DefinitionError,
        match=r"y.yaml:6: groups.a.cpus: some tasks of group 'a' can never run: it asks for 8",
    ):
        load(too_big)


TOOLS = """\
def energy(a, element="Cu"):
    return {"a": a, "e": (a - 3.6) ** 2, "element": element}

def best(points):
    return min(points, key=lambda p: p["e"])["a"]

def double(point):
    return 2 * point["a"]
"""


def test_a_function_ensemble_runs_with_inputs_each_and_after(tmp_path: Path) -> None:
    write(tmp_path, "tools.py", TOOLS)
    path = write(
        tmp_path,
        "fit.yaml",
        """\
resources: {cpus: 2}
groups:
  energy:
    function: "tools:energy"
    sweep: {a: "linspace(3.4, 3.8, 5)"}
    args: {element: Ag}
  double:
    function: "tools:double"
    each: energy
    inputs: {point: energy}
  best:
    function: "tools:best"
    inputs: {points: energy}
""",
    )
    ens = load(path)
    wf = workflow(ens)
    run = shoal.run(wf, base=tmp_path, **ens.run_options())
    assert run.ok
    by = {g: [t for t in wf.tasks if t.options.tags[0] == g] for g in ens.groups}
    assert [len(by[g]) for g in ("energy", "double", "best")] == [5, 5, 1]
    energies = [run.result(t) for t in by["energy"]]
    assert energies[0] == {"a": 3.4, "e": pytest.approx(0.04), "element": "Ag"}
    assert [run.result(t) for t in by["double"]] == [pytest.approx(2 * e["a"]) for e in energies]
    assert run.result(by["best"][0]) == pytest.approx(3.6)


def test_commands_run_in_their_own_task_folders_when_asked(tmp_path: Path) -> None:
    """``workdir: '{task_dir}'`` (``shoal.TASK_DIR`` in Python): each command runs in its own
    task folder, made before it starts, where a program writes its files (as LAMMPS does);
    ``{task_dir}/sub`` is a folder below it, and ``{task_dir}`` inside a path is refused."""
    path = write(
        tmp_path,
        "files.yaml",
        "resources: {cpus: 2}\ngroups:\n  a:\n    command: 'echo {n} > out.txt'\n"
        "    sweep: {n: [1, 2, 3]}\n    workdir: '{task_dir}'\n"
        "  b:\n    command: pwd\n    sweep: {n: [1]}\n    workdir: '{task_dir}/scratch'\n",
    )
    ens = load(path)
    wf = workflow(ens)
    run = shoal.run(wf, base=tmp_path, **ens.run_options())
    assert run.ok, run.failures()
    folders = [Path(run.result(t)["dir"]) for t in wf.tasks]
    assert len(set(folders)) == 4
    assert [(f / "out.txt").read_text() for f in folders[:3]] == ["1\n", "2\n", "3\n"]
    assert run.result(wf.tasks[3])["stdout"] == f"{(folders[3] / 'scratch').resolve()}\n"
    assert not (tmp_path / "out.txt").exists()  # nothing where the run was started

    with shoal.Workflow("api") as api:
        t = shoal.command("sh -c 'echo $PWD'", workdir=shoal.TASK_DIR)()
    done = shoal.run(api, base=tmp_path, cpus=1)
    assert done.result(t)["stdout"] == f"{Path(done.result(t)['dir']).resolve()}\n"
    with pytest.raises(DefinitionError, match=r"may only start the path"):
        shoal.command("pwd", workdir="runs/{task_dir}")
