"""Rules in shoal's config format: triggers, conditions and actions, in real runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.config import load
from shoal.errors import DefinitionError

from .helpers import ran, run_file, write


def test_group_finished_submits_a_group_that_starts_later(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        """\
resources: {cpus: 2}
groups:
  relax:
    command: "sleep 0.{x}"
    sweep: {x: [1, 2, 3]}
  analyse:
    command: "echo {index}"
    count: 2
    start: false
    after: relax
rules:
  - on: group-finished
    group: relax
    submit: analyse
""",
    )
    run = run_file(path)
    assert run.ok
    tasks = ran(run)
    relax = [t for t in tasks if t["group"] == "relax"]
    analyse = [t for t in tasks if t["group"] == "analyse"]
    assert len(relax) == 3 and len(analyse) == 2
    assert all(t["state"] == "succeeded" for t in tasks)
    assert min(t["started"] for t in analyse) >= max(t["ended"] for t in relax)


def test_failed_task_is_retried_with_scaled_timeout(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        """\
resources: {cpus: 1}
groups:
  md:
    command: "sleep 0.6"
    timeout: 0.2
rules:
  - on: task-failed
    group: md
    retry: {timeout: x5, attempts: 2}
""",
    )
    run = run_file(path)
    assert run.ok
    (md,) = ran(run)
    assert md["state"] == "succeeded" and md["attempts"] == 2
    assert md["outcomes"][0] != "succeeded"


def test_retry_gives_up_after_its_attempts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        """\
resources: {cpus: 1}
groups:
  bad:
    command: "false"
rules:
  - on: task-failed
    retry: {attempts: 3}
""",
    )
    run = run_file(path)
    assert not run.ok
    (bad,) = ran(run)
    assert bad["state"] == "failed" and bad["attempts"] == 3


def test_metric_rule_stops_the_run(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        """\
resources: {cpus: 1}
options: {prefetch: 0}  # nothing queued behind a running task: the stop is exact
groups:
  screen:
    command: "false"
    count: 8
rules:
  - on: metric
    group: screen
    when: "failed >= 2"
    stop: drain
""",
    )
    run = run_file(path)
    assert run.state == "failed"  # failed tasks make a failed run, stopped early or not
    states = [t["state"] for t in ran(run)]
    assert 2 <= states.count("failed") < 8
    assert states.count("succeeded") == 0
    assert set(states) - {"failed"} <= {"ready", "pending"}  # the rest never started


def test_times_and_every_count_triggers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        """\
resources: {cpus: 1}
groups:
  a:
    command: "true"
    count: 6
  b:
    command: "true"
    start: false
rules:
  - on: task-succeeded
    group: a
    submit: b
    times: 2
    every: 2
""",
    )
    run = run_file(path)
    assert run.ok
    groups = [t["group"] for t in ran(run)]
    assert groups.count("a") == 6 and groups.count("b") == 2  # triggers 1 and 3 act


def test_log_and_interval_rules_write_to_the_run_log(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        """\
resources: {cpus: 1}
groups:
  a:
    command: "sleep 0.3; false"
rules:
  - on: task-failed
    log: "task {task} ended {state}: {error}"
  - on: interval
    seconds: 0.05
    log: "tick"
    times: 1
""",
    )
    run = run_file(path)
    text = (run.dir / "shoal.log").read_text()
    assert "rule 'rule 1 (task-failed: log)': task a ended failed: command" in text
    assert text.count("tick") == 1


def test_rule_descriptions_in_the_plan(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        """\
groups:
  a: {command: "true"}
  b: {command: "true", start: false}
rules:
  - on: group-finished
    group: a
    submit: b
  - on: task-failed
    retry: {timeout: x2, memory: 4GB}
  - on: metric
    group: a
    when: "mean(runtime) > 30"
    stop: now
    label: too slow
""",
    )
    rules = load(path).plan()["rules"]
    assert rules[0].endswith("on metric [a] when total > 0 and finished == total: submit b")
    assert "retry with timeout x2, memory 4096" in rules[1]
    assert (
        rules[2] == "too slow: on metric [a] when mean(runtime) > 30: stop (cancel running tasks)"
    )


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("  - on: metric\n    group: a\n    stop: now\n", r": on: metric needs when"),
        ("  - on: metric\n    when: 'fialed > 1'\n    stop: now\n", "unknown name 'fialed'"),
        ("  - on: start\n    retry: true\n", r"\.retry: retry acts on the task"),
        ("  - on: interval\n    stop: now\n", "on: interval needs seconds"),
        ("  - on: task-failed\n    retry: {timeout: twice}\n", "write a factor like 'x2'"),
        ("  - on: start\n    group: a\n    stop: now\n", "on: start is not about"),
    ],
)
def test_bad_rules(tmp_path: Path, rule: str, message: str) -> None:
    path = write(tmp_path, "f.yaml", "groups:\n  a: {command: 'true'}\nrules:\n" + rule)
    with pytest.raises(DefinitionError, match=r"f.yaml:\d+: rules\[0\].*" + message):
        load(path)


def test_a_stopped_config_run_resumes_with_its_rules_and_their_counters(tmp_path: Path) -> None:
    import time

    import shoal

    path = write(
        tmp_path,
        "f.yaml",
        """\
resources: {cpus: 1}
options: {prefetch: 0}
groups:
  a:
    command: "sleep 0.2"
    count: 6
  b:
    command: "true"
    start: false
rules:
  - on: task-succeeded
    group: a
    submit: b
    times: 1
""",
    )
    first = run_file(path, stop_at=time.time() + 0.7)
    assert first.state == "interrupted"
    before = [t["group"] for t in ran(first)]
    assert before.count("b") == 1 and before.count("a") == 6
    again = shoal.resume(first.dir)
    assert again.ok
    after = ran(again)
    assert [t["group"] for t in after].count("b") == 1  # the rule had used its one time
    assert all(t["state"] == "succeeded" for t in after)


def test_grow_warns_in_the_log_and_the_run_goes_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.yaml",
        "groups:\n  a: {command: 'true'}\nrules:\n  - on: start\n    grow: 2\n",
    )
    ens = load(path)
    assert any("grow: the local backend cannot resize" in n for n in ens.notes)
    run = run_file(path)
    assert run.ok
    assert (
        "WARNING rule 'rule 1 (start: grow)': grow: this backend cannot resize"
        in (run.dir / "shoal.log").read_text()
    )
