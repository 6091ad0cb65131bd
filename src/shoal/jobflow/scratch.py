"""The store a job runs against in a worker: a maggma ``MemoryStore`` that answers jobflow's
own simple questions from a dict.

``Job.run`` writes one document (``update`` keyed by uuid and index, blobs by blob_uuid) and
asks for its inputs' outputs (``{"uuid": u}`` or ``{"uuid": u, "index": i}``, newest first;
blobs by ``{"blob_uuid": {"$in": [...]}}``). mongomock, behind ``MemoryStore``, answers each
of those by copying and scanning every document: most of what a short job costs. Here they
are kept in a dict, keyed as maggma keys them, and a query of top-level equalities (or
``$in``), top-level properties and one sort key is answered from it, with copies, as a
database would. Anything else (a job that queries the store it was given with
``expose_store``, any other maggma call) moves the documents into mongomock once, and from
then on the store is a plain ``MemoryStore``.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from typing import Any

import bson
from maggma.stores import MemoryStore
from monty.json import jsanitize

_names = itertools.count()


class ScratchStore(MemoryStore):
    """A ``MemoryStore`` whose simple reads and writes skip mongomock (see the module)."""

    def __init__(self, collection_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(collection_name or f"scratch{next(_names)}", **kwargs)
        self._docs: dict[tuple[Any, ...], dict[str, Any]] | None = {}

    def connect(self, force_reset: bool = False) -> None:
        if self._docs is None:
            super().connect(force_reset=force_reset)
        elif force_reset:
            self._docs.clear()

    def close(self) -> None:
        if self._docs is None:
            super().close()  # type: ignore[no-untyped-call]

    @property
    def _collection(self) -> Any:
        """mongomock's collection, holding the documents from now on."""
        if self._docs is not None:
            docs, self._docs = list(self._docs.values()), None
            super().connect()
            if docs:
                self._coll.insert_many(docs)  # type: ignore[attr-defined]
        return self._coll

    def update(self, docs: list[dict[str, Any]] | dict[str, Any], key: Any = None) -> None:
        if self._docs is None or self.validator is not None:
            super().update(docs, key=key)
            return
        key = key or self.key
        names = list(key) if isinstance(key, list | tuple) else [key]
        kept = []
        for doc in docs if isinstance(docs, list) else [docs]:
            d = jsanitize(doc, allow_bson=True, recursive_msonable=True)
            bson.encode(d)  # what a database refuses (an int over 8 bytes, a key not a str)
            kept.append(d)
        for d in kept:
            self._docs[tuple(d[k] for k in names)] = d

    def query(  # type: ignore[override]  # MongoStore's own, which is maggma's too
        self,
        criteria: dict[str, Any] | None = None,
        properties: dict[str, Any] | list[str] | None = None,
        sort: dict[str, Any] | None = None,
        hint: dict[str, Any] | None = None,
        skip: int = 0,
        limit: int = 0,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        found = None if hint or kwargs else self._simple(criteria, properties, sort)
        if found is None:
            yield from super().query(
                criteria=criteria,
                properties=properties,
                sort=sort,
                hint=hint,
                skip=skip,
                limit=limit,
                **kwargs,
            )
            return
        found = found[skip:]
        if limit:
            found = found[:limit]
        keep = None if properties is None else {"_id", *properties}
        for doc in found:
            shown = doc if keep is None else {k: v for k, v in doc.items() if k in keep}
            yield pickle.loads(pickle.dumps(shown, protocol=5))

    def count(self, criteria: dict[str, Any] | None = None, hint: Any = None) -> int:
        found = self._simple(criteria, None, None) if hint is None else None
        if found is None:
            return int(super().count(criteria=criteria, hint=hint))
        return len(found)

    def _simple(
        self,
        criteria: dict[str, Any] | None,
        properties: dict[str, Any] | list[str] | None,
        sort: dict[str, Any] | None,
    ) -> list[dict[str, Any]] | None:
        """The documents a simple query matches, in order; None: not a simple query."""
        if self._docs is None:
            return None
        tests: list[tuple[str, Any, bool]] = []
        for name, want in (criteria or {}).items():
            if "." in name or name.startswith("$"):
                return None
            if isinstance(want, dict):
                if set(want) != {"$in"} or not isinstance(want["$in"], list | tuple):
                    return None
                if not all(_plain(v) for v in want["$in"]):
                    return None
                tests.append((name, want["$in"], True))
            elif _plain(want):
                tests.append((name, want, False))
            else:
                return None
        if isinstance(properties, dict) or any("." in p for p in properties or ()):
            return None
        if sort is not None and (len(sort) != 1 or "." in next(iter(sort))):
            return None
        missing = object()
        out = [
            d
            for d in self._docs.values()
            if all(
                (d.get(n, missing) in v) if many else (d.get(n, missing) == v)
                for n, v, many in tests
            )
        ]
        if sort:
            ((field, way),) = sort.items()
            kinds = {type(d.get(field, missing)) for d in out}
            if not (kinds <= {int} or kinds <= {str}) or way not in (1, -1):
                return None  # missing values, or of mixed kinds: the database's order
            out.sort(key=lambda d: d[field], reverse=way == -1)
        return out


def _plain(value: Any) -> bool:
    """A value that compares in Python as it does in a database: a string or an int (None
    also matches a missing field there, a float matches an int: left to mongomock)."""
    return isinstance(value, str | int) and not isinstance(value, bool)
