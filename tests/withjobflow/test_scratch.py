"""The scratch store a job runs against answers as maggma's MemoryStore (mongomock) does:
the same documents, in the same order, for every query, simple (answered from its dict) or
not (answered by mongomock, after the documents moved there)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("jobflow")

import bson
from hypothesis import given, settings
from hypothesis import strategies as st
from maggma.stores import MemoryStore

from shoal.jobflow.scratch import ScratchStore

uuids = st.sampled_from(["a", "b", "c"])
docs = st.fixed_dictionaries(
    {"uuid": uuids, "index": st.integers(1, 3)},
    optional={
        "output": st.one_of(
            st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)
        ),
        "name": st.sampled_from(["x", "y"]),
    },
)
criteria = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"uuid": uuids}),
    st.fixed_dictionaries({"uuid": uuids, "index": st.integers(1, 3)}),
    st.fixed_dictionaries({"uuid": st.fixed_dictionaries({"$in": st.lists(uuids, max_size=2)})}),
    st.fixed_dictionaries({"name": st.sampled_from(["x", "y", None])}),  # None: mongomock's
    st.fixed_dictionaries({"index": st.fixed_dictionaries({"$gt": st.integers(0, 3)})}),
    st.fixed_dictionaries({"output.0": st.integers()}),
)
queries = st.fixed_dictionaries(
    {
        "criteria": criteria,
        "properties": st.one_of(st.none(), st.just(["output"]), st.just(["index", "name"])),
        "sort": st.one_of(
            st.none(),
            st.fixed_dictionaries({"index": st.sampled_from([1, -1])}),
            st.fixed_dictionaries({"name": st.sampled_from([1, -1])}),
        ),
        "skip": st.integers(0, 2),
        "limit": st.integers(0, 2),
    }
)


def plain(found: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if k != "_id"} for d in found]


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("update"), st.lists(docs, max_size=3)),
            st.tuples(st.just("query"), queries),
        ),
        max_size=8,
    )
)
def test_answers_as_the_memory_store(steps: list[tuple[str, Any]]) -> None:
    ours, theirs = ScratchStore(), MemoryStore()
    ours.connect()
    theirs.connect()
    for what, arg in steps:
        if what == "update":  # what mongomock refuses (an int over 8 bytes) is refused here
            errors = []
            for store in (ours, theirs):
                try:
                    store.update(arg, key=["uuid", "index"])
                    errors.append(None)
                except (OverflowError, bson.errors.InvalidDocument) as err:
                    errors.append(type(err))
            assert errors[0] == errors[1], (arg, errors)
            if errors[0] is not None:
                return  # the job fails: what mongomock kept of the batch does not matter
            continue
        a, b = plain(ours.query(**arg)), plain(theirs.query(**arg))
        if arg["sort"] is None:  # no order asked: compare as sets of documents
            a, b = sorted(map(repr, a)), sorted(map(repr, b))
        assert a == b, arg
        assert ours.count(arg["criteria"]) == theirs.count(arg["criteria"])


def test_an_answer_is_a_copy() -> None:
    """jobflow fills the documents it reads (blobs into outputs): that changes no copy kept."""
    s = ScratchStore()
    s.connect()
    s.update({"uuid": "a", "index": 1, "output": {"x": [1]}}, key=["uuid", "index"])
    doc = next(s.query({"uuid": "a"}))
    doc["output"]["x"].append(2)
    assert next(s.query({"uuid": "a"}))["output"] == {"x": [1]}


def test_a_query_it_cannot_answer_moves_the_documents_to_mongomock() -> None:
    s = ScratchStore()
    s.connect()
    s.update([{"uuid": "a", "index": i, "output": i} for i in (1, 2)], key=["uuid", "index"])
    assert [d["index"] for d in s.query({"index": {"$gte": 2}})] == [2]
    s.update({"uuid": "a", "index": 3, "output": 3}, key=["uuid", "index"])  # mongomock now
    assert s._docs is None
    assert [d["index"] for d in s.query({"uuid": "a"}, sort={"index": -1})] == [3, 2, 1]
