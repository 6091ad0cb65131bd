"""RunOptions is the one definition of a run's options: the signature, the validation, the
keys stored for a resume and the docs all come from its fields; what the command line sets
reaches the runs of a script through a context, not a global."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest

import shoal
from shoal.errors import DefinitionError
from shoal.runtime.options import RunOptions, defaults, started


def test_run_submit_and_resume_show_every_option_in_their_signature() -> None:
    names = [f.name for f in fields(RunOptions)]
    for fn, first in ((shoal.run, "wf"), (shoal.submit, "wf"), (shoal.resume, "run_dir")):
        params = inspect.signature(fn).parameters
        assert list(params) == [first, *names], fn.__name__
        for f in fields(RunOptions):
            assert params[f.name].default == f.default, (fn.__name__, f.name)


def test_the_docs_of_run_name_every_option() -> None:
    doc = shoal.run.__doc__ or ""
    for f in fields(RunOptions):
        assert f"``{f.name}``: {f.metadata['doc']}" in doc


def test_an_unknown_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(
        DefinitionError, match=r"unknown run option 'prefetch_windo'.*prefetch_window"
    ):
        RunOptions.of({"prefetch_windo": 1.0})


def test_stop_mode_is_checked_where_it_is_defined() -> None:
    with pytest.raises(DefinitionError, match=r"stop_mode must be 'cancel'.*'finish'"):
        RunOptions.of({"stop_mode": "later"})


def test_the_stored_options_are_the_plain_ones_marked_stored(tmp_path: Path) -> None:
    opts = RunOptions.of(
        {"cpus": 2, "policy": "waves", "state_dir": tmp_path, "base": tmp_path, "progress": True}
    )
    stored = opts.stored()
    marked = {f.name for f in fields(RunOptions) if f.metadata["stored"]}
    assert set(stored) == marked  # every stored option is plain data here
    assert stored["cpus"] == 2 and stored["policy"] == "waves"
    assert stored["state_dir"] == str(tmp_path)  # a path is stored as text
    assert "base" not in stored and "progress" not in stored and "backend" not in stored
    # what a resume reads back builds the same options again
    assert RunOptions.of(stored).stored() == stored


def test_command_line_defaults_reach_only_the_runs_inside_their_context() -> None:
    assert RunOptions().deadline() is None and not RunOptions().shows_progress()
    with defaults(cli=True, stop_at=1234.0) as ran:
        assert RunOptions().deadline() == 1234.0
        assert RunOptions().shows_progress()
        assert RunOptions(stop_at=99.0, progress=False).deadline() == 99.0
        assert not RunOptions(progress=False).shows_progress()
        started("a run")  # type: ignore[arg-type]
        assert ran.runs == ["a run"]
    assert RunOptions().deadline() is None and not RunOptions().shows_progress()
    started("outside")  # type: ignore[arg-type]  # no CLI context: nothing collects it
    assert ran.runs == ["a run"]


def test_preload_takes_a_list_of_module_names() -> None:
    assert RunOptions(preload=["numpy", "ase.calculators.emt"]).preload == [
        "numpy",
        "ase.calculators.emt",
    ]
    for bad in ("numpy", [""], [3]):
        with pytest.raises(DefinitionError, match="preload must be a list of module names"):
            RunOptions(preload=bad)  # type: ignore[arg-type]
