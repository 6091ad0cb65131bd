"""Rules, strategies and responses refuse bad definitions when they are written, not mid-run."""

from __future__ import annotations

from typing import Any

import pytest

import shoal
from shoal import DefinitionError, Response, Workflow


def handler(event: Any, ctl: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("trigger", "options", "message"),
    [
        ("task-succeded", {}, "unknown trigger 'task-succeded'; did you mean 'task-succeeded'?"),
        ("task-succeeded", {"tag": "md"}, "unknown option 'tag'; did you mean 'tags'?"),
        ("interval", {}, "an interval rule needs seconds=N"),
        ("interval", {"seconds": -1}, "an interval rule needs seconds=N"),
        ("task-failed", {"seconds": 5}, "seconds= is for interval rules"),
        ("task-failed", {"repeat": True}, "repeat=True is only for metric rules"),
        ("metric", {}, "a metric rule needs when="),
        ("metric", {"when": "mean(runtime) >"}, "cannot read when="),
        ("metric", {"when": "x > 1", "tags": ["a", "b"]}, "give one tag"),
        ("task-failed", {"when": "failed > 1"}, "when= is only for metric rules"),
        ("idle", {"tags": "md"}, "idle has none"),
        ("task-failed", {"on_error": "ignore"}, "on_error must be 'stop'"),
        ("task-failed", {"tags": 5}, "tags must be a string or a list of strings"),
    ],
)
def test_bad_rules_are_refused_with_what_to_write(
    trigger: str, options: dict[str, Any], message: str
) -> None:
    wf = Workflow("rules")
    with pytest.raises(DefinitionError) as err:
        wf.on(trigger, **options)(handler)
    assert message in str(err.value)
    assert wf.rules == []


def test_rules_of_nested_workflows_are_collected() -> None:
    with Workflow("outer") as outer, Workflow("inner") as inner:
        pass
    inner.on("start")(handler)
    outer.on("end")(handler)
    assert [r.trigger for r in outer.rules] == ["end", "start"]


def test_bad_responses_are_refused() -> None:
    with pytest.raises(DefinitionError, match="takes tasks or workflows, got int"):
        Response(add=[1])
    with pytest.raises(DefinitionError, match="stop_children skips the dependents"):
        Response(stop_children=True, detour=shoal.task(handler)(1, 2))
    with pytest.raises(DefinitionError, match="must be True or False"):
        Response(stop_run="yes")  # type: ignore[arg-type]


def test_tracking_a_kept_name_is_refused() -> None:
    with pytest.raises(DefinitionError, match="kept already"):
        Workflow("t", track={"runtime": "runtime"})
    with pytest.raises(DefinitionError, match="field path"):
        Workflow("t").track(energy=3)  # type: ignore[arg-type]


def test_a_workflow_with_neither_tasks_nor_steering_is_refused(tmp_path: Any) -> None:
    with pytest.raises(DefinitionError, match="has no tasks"):
        Workflow("empty").run(base=tmp_path)
    assert not list(tmp_path.iterdir())
    assert shoal.Strategy().done(None) is False
