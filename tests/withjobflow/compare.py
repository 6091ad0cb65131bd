"""Comparing what jobflow's ``run_locally`` and shoal leave in a JobStore for the same flow.

Both run deep copies of one flow (the same uuids). The documents of the flow's own jobs must
be equal but for what each run makes new (blob uuids, the uuids of flows made at run time);
the jobs made at run time have new uuids in each run, so for them the (name, index, output)
of every document must match as a multiset."""

from __future__ import annotations

import copy
import json
from typing import Any

from jobflow import Flow, JobStore
from jobflow import run_locally as jf_run_locally
from maggma.stores import MemoryStore

import shoal


def new_store(*blobs: str) -> JobStore:
    store = JobStore(MemoryStore(), additional_stores={n: MemoryStore() for n in blobs})
    store.connect()
    return store


def docs(store: JobStore) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for d in store.docs_store.query({}):
        d = {k: v for k, v in d.items() if k not in ("_id", "completed_at")}
        out[(d["uuid"], d["index"])] = d
    return out


def shape(store: JobStore, skip: set[str]) -> list[str]:
    """(name, index, output) of every document whose uuid is not in ``skip``, sorted."""
    return sorted(
        json.dumps([d["name"], d["index"], _blind(d["output"], set())], sort_keys=True, default=str)
        for (uuid, _), d in docs(store).items()
        if uuid not in skip
    )


def twin(flow: Flow, *blobs: str, **options: Any) -> tuple[JobStore, JobStore, Any]:
    """Run copies of ``flow`` with jobflow and with shoal; both stores and shoal's run."""
    theirs, ours = new_store(*blobs), new_store(*blobs)
    jf_run_locally(copy.deepcopy(flow), store=theirs, log=False)
    run = shoal.run(copy.deepcopy(flow), store=ours, progress=False, **options)
    return theirs, ours, run


def _blind(value: Any, hosts: set[str]) -> Any:
    """``value`` with what is new in each run replaced by "*": blob uuids, and the uuids of
    the flows made at run time among a job's hosts."""
    if isinstance(value, dict):
        return {
            k: "*"
            if k == "blob_uuid"
            else _blind(v, hosts)
            if k != "hosts"
            else [h if h in hosts else "*" for h in v]
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_blind(v, hosts) for v in value]
    return value


def _fixed(doc: dict[str, Any], hosts: set[str]) -> dict[str, Any]:
    out = _blind(doc, hosts)
    if out["name"] == "store_inputs":  # its output: references to jobs made at run time
        out.pop("output")
    return out


def same(theirs: JobStore, ours: JobStore, flow: Flow) -> None:
    """The two stores hold the same documents: those of the jobs of ``flow`` equal but for
    what run time makes new, and the same (name, index, output) for the others."""
    static = {j.uuid for j, _ in flow.iterflow()}
    hosts = {h for j, _ in flow.iterflow() for h in j.hosts}
    a, b = docs(theirs), docs(ours)
    assert len(a) == len(b), (len(a), len(b))
    for key in a:
        if key[0] in static:
            assert key in b, f"shoal wrote no document for {key}"
            assert _fixed(a[key], hosts) == _fixed(b[key], hosts), key
            got = ours.get_output(key[0], which=key[1], load=True)
            assert got == theirs.get_output(key[0], which=key[1], load=True), key
    assert shape(theirs, static) == shape(ours, static)
