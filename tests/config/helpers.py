"""Helpers for config-file tests: write files, run an ensemble, read what ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import shoal
from shoal.config import load
from shoal.config.build import workflow
from shoal.store.queries import Reader


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def run_file(path: Path, sets: tuple[str, ...] = (), **options: Any) -> shoal.Run:
    """Run a config file as ``shoal run`` does, with run directories under its folder."""
    ens = load(path, sets)
    return shoal.run(workflow(ens), base=path.parent, **{**ens.run_options(), **options})


def ran(run: shoal.Run) -> list[dict[str, Any]]:
    """Each task of a run: id, name, group (first tag), state, attempts, start and end."""
    out = []
    with Reader(run.dir) as r:
        for t in r.tasks():
            att = r.attempts(t.id)
            out.append(
                {
                    "id": t.id,
                    "name": t.name,
                    "group": t.tags[0] if t.tags else None,
                    "state": t.state,
                    "attempts": t.attempts,
                    "started": min((a["started"] for a in att if a["started"]), default=None),
                    "ended": max((a["ended"] for a in att if a["ended"]), default=None),
                    "outcomes": [a["outcome"] for a in att],
                }
            )
    return out
