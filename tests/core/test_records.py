"""The task table's records (core/tasks.py Records) read like the dict they replace: dense ids
in a list, holes and far ids included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.core.stimuli import TaskInfo
from shoal.core.tasks import Records, TaskRecord

ids = st.lists(st.one_of(st.integers(0, 40), st.integers(2000, 2100)), max_size=60)


@given(ids)
def test_records_read_like_a_dict(tids: list[int]) -> None:
    records, same = Records(), {}
    for tid in tids:
        e = TaskRecord(TaskInfo(tid))
        records[tid] = e
        same[tid] = e
        assert len(records) == len(same)
    assert sorted(records) == sorted(same)
    assert sorted(records.items(), key=lambda p: p[0]) == sorted(same.items(), key=lambda p: p[0])
    assert {id(e) for e in records.values()} == {id(e) for e in same.values()}
    for tid in (-1, *range(0, 45), 1500, *range(1995, 2105), "x"):
        assert (tid in records) == (tid in same)
        assert records.get(tid) is same.get(tid)  # type: ignore[arg-type]


def test_a_negative_id_is_refused_not_read_from_the_end() -> None:
    records = Records()
    records[0] = TaskRecord(TaskInfo(0))
    assert records.get(-1) is None and -1 not in records
