"""HandleIds (task handle key -> id in a run) reads like the dict it replaces, whatever order
the pairs come in, and stays a few runs for a workflow made in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.runtime.work import HandleIds

pairs = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=80)


@given(pairs)
def test_it_reads_like_a_dict(items: list[tuple[int, int]]) -> None:
    ids, same = HandleIds(), {}
    for key, tid in items:
        ids[key] = tid
        same[key] = tid
        assert dict(ids.items()) == same
        assert len(ids) == len(same)
    for key in range(-2, 64):
        assert ids.get(key) == same.get(key)
        assert (key in ids) == (key in same)


def test_a_workflow_made_in_order_is_one_run() -> None:
    ids = HandleIds((1000 + i, i) for i in range(100_000))
    assert len(ids) == 100_000
    assert ids[1000] == 0 and ids[100_999] == 99_999 and ids.get(999) is None
    assert len(ids._runs) == 1 and not ids._other
    ids[200_000] = 100_000  # work added later: a run of its own
    ids[5] = 7  # out of order: kept aside
    assert ids[200_000] == 100_000 and ids[5] == 7 and len(ids) == 100_002
