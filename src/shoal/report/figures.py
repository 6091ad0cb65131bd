"""Figures of a run, drawn with matplotlib (no display needed: the Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.errors import DefinitionError
from shoal.store.dag import COLOURS, Dag, levels


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or a clear error when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DefinitionError(
            "pictures need matplotlib: pip install 'shoal[report]' (or pip install matplotlib)"
        ) from None
    return plt


def draw_dag(d: Dag, path: Path, title: str) -> None:
    """The graph as a PNG: boxes in layers (each below the boxes it depends on), coloured by
    state; grouped boxes say how many tasks they hold."""
    plt = pyplot()
    depth = levels(d)
    rows: dict[int, list[str]] = {}
    for key, level in depth.items():
        rows.setdefault(level, []).append(key)
    wide = max((len(r) for r in rows.values()), default=1)
    fig_w = min(2.2 * wide + 1, 40)
    fig_h = min(1.3 * len(rows) + 1, 40)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    where: dict[str, tuple[float, float]] = {}
    for level, keys in rows.items():
        for i, key in enumerate(keys):
            where[key] = ((i + 0.5) / len(keys), 1 - (level + 0.5) / len(rows))
    for (a, b), n in d.edges.items():
        (x0, y0), (x1, y1) = where[a], where[b]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "->", "color": "#666666", "lw": 0.8},
        )
        if d.grouped:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, str(n), fontsize=7, color="#444444")
    small = 6 if len(d.boxes) > 60 else 8
    for key, box in d.boxes.items():
        x, y = where[key]
        label = box.label
        if d.grouped:
            label += f"\n{sum(box.states.values())} tasks"
        ax.text(
            x,
            y,
            label,
            ha="center",
            va="center",
            fontsize=small,
            bbox={"boxstyle": "round", "fc": COLOURS.get(box.state, "#ffffff"), "ec": "#555555"},
        )
    ax.set_axis_off()
    shown = f"{d.tasks} tasks" + (", grouped by name" if d.grouped else "")
    ax.set_title(f"{title} ({shown})", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
