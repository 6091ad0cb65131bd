"""A run's task graph as a person looks at it (``shoal graph``, the dashboard): each task with
its state and the tasks it depends on; or, when there are too many to draw, one box per task
name (the function) with how many tasks it holds and in which states, and the edges between
boxes with how many dependencies they stand for.

Text formats: Mermaid (``flowchart``, which GitHub and many notebooks draw) and Graphviz dot.
Every label is escaped for its format: task names come from users.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shoal.store.queries import Reader

MOST = 200  # tasks drawn one by one at most; above, the graph is grouped by task name

# One colour per state (fill, for both formats); the dashboard uses the same
COLOURS = {
    "pending": "#d9d9d9",
    "ready": "#c6dbef",
    "queued": "#9ecae1",
    "running": "#fdd49e",
    "retrying": "#fdae6b",
    "succeeded": "#a1d99b",
    "failed": "#fb6a4a",
    "dep_failed": "#fcbba1",
    "cancelled": "#bdbdbd",
    "skipped": "#efedf5",
}


@dataclass
class Box:
    """A task, or (grouped) every task of one name."""

    key: str
    label: str
    state: str  # the task's; for a group, its most pressing state (failed first, then ...)
    states: Counter[str] = field(default_factory=Counter)


@dataclass
class Dag:
    boxes: dict[str, Box]
    edges: Counter[tuple[str, str]]  # (from, to) -> how many dependencies
    grouped: bool
    tasks: int


PRESSING = ("failed", "running", "retrying", "dep_failed", "cancelled", "queued", "ready")


def dag(
    rundir: Path,
    most: int = MOST,
    group: bool | None = None,
    states: tuple[str, ...] = (),
    tag: str | None = None,
) -> Dag:
    """The graph of the run in ``rundir``: task by task up to ``most`` tasks, grouped by
    name above (or as ``group`` says). A selection (tasks in ``states``, or of ``tag``)
    draws those tasks only, with the dependencies among them."""
    with Reader(rundir) as r:
        rows = r.links()
        if states or tag:
            chosen = {t["id"] for t in r.table(states, tag=tag)[0]}
            rows = [row for row in rows if row[0] in chosen]
    grouped = len(rows) > most if group is None else group
    boxes: dict[str, Box] = {}
    edges: Counter[tuple[str, str]] = Counter()
    key_of: dict[int, str] = {}
    by_name: dict[str, str] = {}
    for tid, name, state, deps in rows:
        key = by_name.setdefault(name, f"g{len(by_name)}") if grouped else f"t{tid}"
        key_of[tid] = key
        box = boxes.get(key)
        if box is None:
            box = boxes[key] = Box(key, name if grouped else f"#{tid} {name}", state)
        box.states[state] += 1
        for dep in deps:
            if dep in key_of and key_of[dep] != key:
                edges[(key_of[dep], key)] += 1
    if grouped:
        for box in boxes.values():
            box.state = next((s for s in PRESSING if box.states[s]), "succeeded")
            if not box.states["succeeded"] and box.state == "succeeded":
                box.state = box.states.most_common(1)[0][0]
    return Dag(boxes, edges, grouped, len(rows))


def _counts(box: Box) -> str:
    total = sum(box.states.values())
    shown = ", ".join(f"{n} {s}" for s, n in box.states.most_common())
    return f"{total} {'task' if total == 1 else 'tasks'}: {shown}"


def mermaid(d: Dag) -> str:
    """The graph as a Mermaid flowchart."""

    def text(s: str) -> str:  # inside "...": quotes and angle brackets as entities
        return (
            s.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
        )

    lines = ["flowchart TD"]
    for box in d.boxes.values():
        label = text(box.label) + (f"<br/>{text(_counts(box))}" if d.grouped else "")
        lines.append(f'    {box.key}["{label}"]:::{box.state}')
    for (a, b), n in d.edges.items():
        lines.append(f"    {a} -->|{n}| {b}" if d.grouped else f"    {a} --> {b}")
    for state, colour in COLOURS.items():
        lines.append(f"    classDef {state} fill:{colour},stroke:#555")
    return "\n".join(lines) + "\n"


def dot(d: Dag) -> str:
    """The graph in Graphviz's dot language."""

    def text(s: str) -> str:
        return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = [
        "digraph shoal {",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for box in d.boxes.values():
        label = text(box.label) + (f"\\n{text(_counts(box))}" if d.grouped else "")
        fill = COLOURS.get(box.state, "#ffffff")
        lines.append(f'    {box.key} [label="{label}", fillcolor="{fill}"];')
    for (a, b), n in d.edges.items():
        lines.append(f'    {a} -> {b} [label="{n}"];' if d.grouped else f"    {a} -> {b};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def levels(d: Dag) -> dict[str, int]:
    """Each box's depth: 0 for those that depend on none, else one more than the deepest box
    it depends on (a layered layout for drawing)."""
    parents: dict[str, list[str]] = {k: [] for k in d.boxes}
    for a, b in d.edges:
        parents[b].append(a)
    depth: dict[str, int] = {}
    for key in d.boxes:  # boxes come in id order: a dependency is always earlier
        depth[key] = 1 + max((depth.get(p, 0) for p in parents[key]), default=-1)
    return depth
