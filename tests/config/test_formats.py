"""Ensemble Launcher JSON and ensemble-python YAML: this project's own inputs in those formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoal.config import load
from shoal.errors import DefinitionError

from .helpers import ran, run_file, write


def el(tmp_path: Path, ensembles: dict[str, Any], name: str = "e.json") -> Path:
    return write(tmp_path, name, json.dumps({"ensembles": ensembles}, indent=1))


def test_el_many_to_many_is_a_product_with_scalar_placeholders(tmp_path: Path) -> None:
    path = el(
        tmp_path,
        {
            "scan": {
                "cmd_template": "echo {mode} {T} {seed}",
                "relation": "many-to-many",
                "nnodes": 1,
                "ppn": 1,
                "mode": "nvt",
                "T": "linspace(300, 600, 3)",
                "seed": [1, 2],
            }
        },
    )
    ens = load(path)
    g = ens.groups["scan"]
    lines = [g.command_line(r, i) for i, r in enumerate(g.rows())]
    assert lines == [f"echo nvt {T} {s}" for T in (300.0, 450.0, 600.0) for s in (1, 2)]
    r = run_file(path)
    assert r.ok and len(ran(r)) == 6


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (
            {"cmd_template": "x {a} {b}", "nnodes": 1, "a": [1, 2, 3], "b": [1, 2]},
            r"e.json:\d+: ensembles.bad: zipped parameters .* a has 3, b has 2",
        ),
        (
            {"cmd_template": "x", "nnodes": 1, "ppm": 2},
            r"ensembles.bad.ppm: unknown key 'ppm'; did you mean 'ppn'\?",
        ),
        (
            {"cmd_template": "x", "nnodes": 1, "ngpus_per_process": 0.5},
            r"ngpus_per_process: must be a whole number >= 0, got 0.5; shoal gives each rank "
            r"whole GPUs",
        ),
        (
            {"cmd_templat": "x", "nnodes": 1},
            r"ensembles.bad: cmd_template is required; 'cmd_templat' looks like a misspelling",
        ),
        (
            {"cmd_template": "x", "nnodes": 1, "relation": "one-to-many"},
            r"relation: must be 'one-to-one' or 'many-to-many'",
        ),
        (
            {"cmd_template": "x {a}", "nnodes": 1, "a": "linspace(0, 1, __import__('os'))"},
            r"ensembles.bad.a: .* only literal numbers",
        ),
        (
            {"cmd_template": "x {b}", "nnodes": 1, "a": [1]},
            r"the command uses \{b\}, but group 'bad' has no parameter 'b'",
        ),
        (
            {"cmd_template": "x", "nnodes": 1, "relation": ["one-to-one"]},
            r"ensembles.bad.relation: must be 'one-to-one' or 'many-to-many'",
        ),
        (
            {"cmd_template": "x", "nnodes": 1, "env": {"A": None}},
            r"ensembles.bad.env: must map variable names to text or numbers",
        ),
        (
            {"cmd_template": "x", "nnodes": 1, "ppn": [1, 1.5]},
            r"ensembles.bad.ppn\[1\]: must be a whole number >= 1, got 1.5",
        ),
        (
            {"cmd_template": "x {a}", "nnodes": 1, "a": None},
            r"ensembles.bad.a: must be a value, a list or an expression",
        ),
        (
            {"cmd_template": "x", "nnodes": 1, "ppn": 64},
            r"ensembles.bad.ppn: group 'bad' can never run: it asks for 64 ranks",
        ),
    ],
)
def test_el_bad_input(tmp_path: Path, info: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        load(el(tmp_path, {"bad": info}))


def test_el_set_names_an_ensemble(tmp_path: Path) -> None:
    path = el(tmp_path, {"a": {"cmd_template": "echo {x}", "nnodes": 1, "x": [1, 2]}})
    ens = load(path, ["a.x=[5, 6, 7]"])
    assert ens.groups["a"].size == 3
    with pytest.raises(DefinitionError, match=r"'b' is not an ensemble of this file"):
        load(path, ["b.x=1"])


EP = """\
jobs:
  - name: calc
    command: sh -c 'exit {code}'
    count: 1
    nodes: 1
  - name: flaky
    command: "false"
    count: 3
  - name: cleanup
    command: echo cleaning up
    count: 1
rules:
  - trigger: start
    action: {name: submit, label: flaky}
  - trigger: metric
    name: count.flaky.failed
    when: ">= 2"
    action: {name: submit, label: cleanup}
  - trigger: job-fail
    action: {name: submit, label: calc, repetitions: 2}
"""


def test_ep_job_fail_and_failed_count(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yaml", EP.replace("{code}", "0"))
    ens = load(path)
    assert ens.groups["calc"].task_options({}, 0).request.describe() == "1 core"
    r = run_file(path)
    counts: dict[str, int] = {}
    for t in ran(r):
        counts[str(t["group"])] = counts.get(str(t["group"]), 0) + 1
    # 3 flaky jobs fail; the failed count reaches 2 once; job-fail submits calc twice
    assert counts == {"flaky": 3, "cleanup": 1, "calc": 2}


def test_ep_entries_sharing_a_name_form_one_group_without_clashes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.yaml",
        "jobs:\n  - {name: a, command: echo one}\n  - {name: a, command: echo two}\n"
        "  - {name: 'a#2', command: echo three}\nrules:\n  - trigger: start\n"
        "    action: {name: submit, label: a}\n  - trigger: start\n"
        "    action: {name: submit, label: 'a#2'}\n",
    )
    ens = load(path)
    assert sorted(g.template for g in ens.groups.values()) == ["echo one", "echo three", "echo two"]
    assert sorted(g.template for g in ens.tagged("a")) == ["echo one", "echo two"]
    r = run_file(path)
    assert r.ok and sorted(r.result(t["id"])["stdout"].strip() for t in ran(r)) == [
        "one",
        "three",
        "two",
    ]


def test_ep_comparisons_take_exponents(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.yaml",
        "jobs:\n  - {name: a, command: 'true'}\nrules:\n  - trigger: metric\n"
        "    name: mean.a-duration\n    when: '>= 1e3'\n    action: {name: terminate}\n",
    )
    m = load(path).rules[0].when
    assert m is not None and (m.op, m.value) == (">=", 1000.0)  # type: ignore[union-attr]


def test_ep_braces_in_commands_are_literal(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.yaml",
        "jobs:\n  - name: j\n    command: echo {x}\nrules:\n  - trigger: start\n"
        "    action: {name: submit, label: j}\n",
    )
    r = run_file(path)
    assert r.ok
    (t,) = ran(r)
    assert r.result(t["id"])["stdout"].strip() == "{x}"


def test_ep_tasks_nodes_and_duration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.yaml",
        "jobs:\n  - name: mpi\n    command: hostname\n    tasks: 2\n    duration: 30\n"
        "rules:\n  - trigger: start\n    action: {name: submit, label: mpi}\n",
    )
    opts = load(path).groups["mpi"].task_options({}, 0)
    assert (opts.ranks, opts.cpus, opts.timeout) == (2, 1, 30.0)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "  - trigger: job-finsh\n    action: {name: submit, label: a}\n",
            r"rules\[0\].trigger: unknown trigger 'job-finsh'; did you mean 'job-finish'\?",
        ),
        (
            "  - trigger: job-depend\n    action: {name: submit, label: a}\n",
            "shoal has no event for 'job-depend'",
        ),
        (
            "  - trigger: start\n    action: {name: submit, label: b}\n",
            r"rules\[0\].action.label: no job named 'b'",
        ),
        (
            "  - trigger: start\n    action: {name: custom, label: f}\n",
            "shoal runs no code from config files",
        ),
        (
            "  - trigger: metric\n    name: iqr.a-duration\n    when: '> 1'\n"
            "    action: {name: terminate}\n",
            r"unknown statistic 'iqr' \(shoal does not keep",
        ),
        (
            "  - trigger: metric\n    name: count.a.success\n    when: '== 2'\n"
            "    action: {name: terminate}\n",
            "when must be a number",
        ),
        (
            "  - trigger: metric\n    name: count.b.success\n    when: 2\n"
            "    action: {name: terminate}\n",
            "names group 'b', which is not a job",
        ),
        (
            "  - trigger: start\n    action: {name: sumbit, label: a}\n",
            r"rules\[0\].action.name: must be one of .*did you mean 'submit'\?",
        ),
    ],
)
def test_ep_bad_rules(tmp_path: Path, rule: str, message: str) -> None:
    path = write(tmp_path, "e.yaml", "jobs:\n  - name: a\n    command: 'true'\nrules:\n" + rule)
    with pytest.raises(DefinitionError, match=message):
        load(path)


def test_ep_unknown_job_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yaml", "jobs:\n  - name: a\n    command: 'true'\n    cont: 2\n")
    with pytest.raises(DefinitionError, match=r"e.yaml:4: jobs\[0\].cont: .*did you mean 'count'"):
        load(path)
