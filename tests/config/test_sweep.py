"""Sweep values and how parameters combine (shoal.config.sweep)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.config.sweep import Block, Sweep, combine, expression, length, values
from shoal.errors import DefinitionError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linspace(0, 10, 5)", [0.0, 2.5, 5.0, 7.5, 10.0]),
        ("linspace(1, 1, 1)", [1.0]),
        ("linspace(0, 1, 3)", [0.0, 0.5, 1.0]),
        ("logspace(0, 3, 4)", [1.0, 10.0, 100.0, 1000.0]),
        ("logspace(0, 2, 3, base=2)", [1.0, 2.0, 4.0]),
        ("range(4)", [0, 1, 2, 3]),
        ("range(1, 9, 3)", [1, 4, 7]),
        ("arange(0, 1, 0.25)", [0.0, 0.25, 0.5, 0.75]),
        ("arange(0, 10, 5)", [0, 5]),
        ("arange(300, 1200, 300)", [300, 600, 900]),
    ],
)
def test_grid_expressions(text: str, expected: list[float]) -> None:
    assert expression(text, "x") == expected


def test_linspace_end_is_exact_and_count_is_n() -> None:
    got = expression("linspace(0.1, 0.7, 7)", "x")
    assert len(got) == 7 and got[0] == 0.1 and got[-1] == 0.7
    assert got[3] == pytest.approx(0.4)


def test_random_samples_are_reproducible_with_a_seed_and_in_range() -> None:
    a = expression("uniform(2, 3, 50, seed=7)", "x")
    assert a == expression("uniform(2, 3, 50, seed=7)", "x")
    assert a != expression("uniform(2, 3, 50, seed=8)", "x")
    assert len(a) == 50 and all(2 <= x <= 3 for x in a)
    n = expression("normal(300, 10, 400, seed=1)", "x")
    assert sum(n) / len(n) == pytest.approx(300, abs=3)
    r = expression("randint(1, 6, 200, seed=3)", "x")
    assert set(r) == {1, 2, 3, 4, 5, 6}
    c = expression("choice(['Cu', 'Ag'], 20, seed=0)", "x")
    assert set(c) <= {"Cu", "Ag"} and len(c) == 20


def test_values_from_files(tmp_path: Path) -> None:
    (tmp_path / "runs.csv").write_text("T,P\n300,1\n600,2.5\n900,x\n")
    assert expression("csv('runs.csv', 'T')", "x", tmp_path) == [300, 600, 900]
    assert expression("csv('runs.csv', 'P')", "x", tmp_path) == [1, 2.5, "x"]
    (tmp_path / "plain.csv").write_text("a,1\nb,2\n")
    assert expression("csv('plain.csv', 0)", "x", tmp_path) == ["a", "b"]
    (tmp_path / "list.txt").write_text("Cu\n\nAg\n")
    assert expression("lines('list.txt')", "x", tmp_path) == ["Cu", "Ag"]
    (tmp_path / "in").mkdir()
    for name in ("b.xyz", "a.xyz", "c.cif"):
        (tmp_path / "in" / name).write_text("")
    assert expression("glob('in/*.xyz')", "x", tmp_path) == ["in/a.xyz", "in/b.xyz"]


def test_blank_cells_and_binary_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "gaps.csv").write_text("T,P\n300,1\n,2\n")
    with pytest.raises(DefinitionError, match=r"gaps\.csv line 3 has no value in column 'T'"):
        expression("csv('gaps.csv', 'T')", "x", tmp_path)
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DefinitionError, match="is not text"):
        expression("lines('bin.dat')", "x", tmp_path)
    with pytest.raises(DefinitionError, match="numbered from 0 to 1"):
        (tmp_path / "two.csv").write_text("a,b\n")
        expression("csv('two.csv', -1)", "x", tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("logspace(0, 400, 3)", "too large for a number"),
        ("logspace(0, 1, 3, base=-2)", "base must be a positive number"),
        ("arange(0, 1e308, 1e-308)", "too many values"),
        ("arange(0, 1, 1e-300)", "more than one parameter may have"),
        ("range(0, 100000000000)", "more than one parameter may have"),
        ("linspace(0, 1, 1000000000)", "more than one parameter may have"),
    ],
)
def test_huge_or_overflowing_grids_are_refused_at_once(text: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        expression(text, "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("csv('runs.csv', 'temprature')", "no column 'temprature'; did you mean 'temperature'?"),
        ("csv('missing.csv', 'T')", "no such file"),
        ("glob('*.nothing')", "matches no files"),
    ],
)
def test_file_values_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "runs.csv").write_text("temperature\n300\n")
    with pytest.raises(DefinitionError, match=message.replace("?", r"\?")):
        expression(text, "sweep.T", tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('true')", "not a sweep expression"),
        ("linspace(0, 1, 2**100)", "only literal numbers"),
        ("linspace(0, x, 3)", "only literal numbers"),
        ("linspce(0, 1, 3)", "did you mean .linspace"),
        ("eval('1')", "unknown function 'eval'"),
        ("linspace(0, 1)", "wrong arguments"),
        ("linspace(0, 1, 0)", "positive integer"),
        ("range(0.5)", "1 to 3 integers"),
        ("linspace(0, 1, 3", "cannot read"),
        ("linspace(**{'a': 1})", r"\*\* is not allowed"),
        ("open('x').read()", "not a sweep expression"),
    ],
)
def test_unsafe_or_unknown_expressions_are_refused(text: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as err:
        expression(text, "f.yaml:3: groups.a.sweep.T")
    assert "f.yaml:3: groups.a.sweep.T" in str(err.value)


def test_values_of_lists_scalars_and_expressions() -> None:
    assert values([1, 2], "x") == [1, 2]
    assert values("config.json", "x") == ["config.json"]
    assert values(5, "x") == [5]
    assert values("range(2)", "x") == [0, 1]
    with pytest.raises(DefinitionError, match="empty"):
        values([], "x")


def test_product_and_zip_rows() -> None:
    s = combine({"a": [1, 2], "b": ["x", "y", "z"]}, [], "w")
    assert len(s) == 6
    assert list(s) == [{"a": a, "b": b} for a, b in itertools.product([1, 2], "xyz")]
    z = combine({"a": [1, 2], "b": ["x", "y"], "c": [0, 1, 2]}, [["a", "b"]], "w")
    assert len(z) == 6
    assert list(z)[:3] == [
        {"a": 1, "b": "x", "c": 0},
        {"a": 1, "b": "x", "c": 1},
        {"a": 1, "b": "x", "c": 2},
    ]
    assert {(r["a"], r["b"]) for r in z} == {(1, "x"), (2, "y")}


def test_zip_lengths_must_match_and_both_are_named() -> None:
    with pytest.raises(DefinitionError, match="T has 3, P has 2"):
        combine({"T": [1, 2, 3], "P": [1, 2]}, [["T", "P"]], "f.yaml:4: groups.md.zip")
    with pytest.raises(DefinitionError, match="did you mean 'T'"):
        combine({"T": [1]}, [["t"]], "w")
    with pytest.raises(DefinitionError, match="more than one zip"):
        combine({"T": [1], "P": [2]}, [["T"], ["T", "P"]], "w")


@given(st.lists(st.integers(1, 4), min_size=0, max_size=4))
def test_row_i_is_the_ith_row(sizes: list[int]) -> None:
    blocks = [Block((f"p{k}",), (list(range(n)),)) for k, n in enumerate(sizes)]
    s = Sweep(blocks)
    rows = list(s)
    assert len(rows) == len(s)
    assert [s.row(i) for i in range(len(s))] == rows


def test_a_range_too_large_for_len_is_refused_by_its_size() -> None:
    # len(range(10**30)) overflows: the count is computed by arithmetic
    with pytest.raises(DefinitionError, match=r"1e\+30 values is more than one parameter may"):
        expression("range(1000000000000000000000000000000)", "w")
    assert length("range(1000000000000000000000000000000)") == 10**30
    assert length("range(10, 0, -3)") == len(range(10, 0, -3))
    assert length("linspace(0, 1, 7)") == 7 and length([1, 2]) == 2 and length("lines('x')") is None


def test_a_rule_stored_before_sweeps_moved_to_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run written while Sweep lived in shoal.spec.sweep stores it under that name (a config
    file's rule holds its ensemble, whose groups hold their sweeps): resume still finds it."""
    import pickle
    import sys
    import types

    import cloudpickle

    from shoal.config import sweep as moved
    from shoal.store.recover import load_rule

    old = types.ModuleType("shoal.spec.sweep")
    monkeypatch.setitem(sys.modules, "shoal.spec.sweep", old)
    for cls in (Sweep, Block):
        monkeypatch.setattr(old, cls.__name__, cls, raising=False)
        monkeypatch.setattr(cls, "__module__", "shoal.spec.sweep")
    stored = cloudpickle.dumps({"sweep": combine({"x": [1, 2]}, [], "here")})
    assert b"shoal.spec.sweep" in stored
    monkeypatch.undo()
    assert "shoal.spec.sweep" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(stored)
    rule = load_rule(stored)
    assert isinstance(rule["sweep"], moved.Sweep)
    assert list(rule["sweep"]) == [{"x": 1}, {"x": 2}]
