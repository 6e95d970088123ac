"""``expckpt show``: the checkpoint tree as text (DVC 2's ``╓ ╟ ╨`` chains, nested) and as JSON.

Newest first. A run that continued from (or was initialized from) a checkpoint is drawn one level
in, just above that checkpoint, its first row naming where it came from::

    ╓ tut@12        12  4c1d2e0  ...  newest
    │ ╓ tut-b@8      8  9a0b1c2  ...  newest
    │ ╨ tut-b@6      6  77e0f1a (5d3c2b1 tut@5)
    ╟ tut@5          5  5d3c2b1  ...
    ┆ … 4 more (tut@1 … tut@4), kept by: all
    ╨ tut@0          0  0a1b2c3

A long run folds its unremarkable middle (kept by policy, not best, not a branch point) into one
``┆`` line; ``--all`` lists every checkpoint. Every cell goes through ``terminal_safe`` (names
and metric names come from Git, a pulled ref is anyone's).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from expckpt.store.records import CheckpointRecord
from expckpt.ops.lineage import Point, Run, Tree
from expckpt.text import terminal_safe
from expckpt.ops.unsafe import ADVICE

__all__ = ["FOLD_OVER", "render_tree", "tree_as_json"]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.5g}"


def _glyph(index: int, count: int) -> str:
    if count == 1:
        return "═"
    return "╓" if index == 0 else ("╨" if index == count - 1 else "╟")


def _created(record: CheckpointRecord) -> str:
    try:
        return dt.datetime.fromtimestamp(record.time).strftime("%b %d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # beyond what the local time zone can show
        return "-"


def _iso(time: float) -> str | None:
    try:
        return dt.datetime.fromtimestamp(time, dt.UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return None


FOLD_OVER = 8
"""A run with more checkpoints than this folds its middle unless ``--all``."""
_KEEP_NEWEST = 3
"""How many of a folded run's newest checkpoints stay listed."""


def _source_text(run: Run) -> str:
    if run.source_commit is None:
        return ""
    name = f" {run.source.name}" if run.source is not None else ""
    word = "init from " if run.link == "initialized" else ""  # a resumed run reads as before: (sha name)
    return f" ({word}{run.source_commit[:7]}{name})"


def _visible(run: Run, fold: bool) -> list[bool]:
    count = len(run.points)
    if not fold or count <= FOLD_OVER:
        return [True] * count
    sources = {c.source.commit for c in run.children if c.source is not None}
    return [
        i == 0 or i >= count - _KEEP_NEWEST or bool(set(p.marks) - {"pushed"}) or p.record.commit in sources
        for i, p in enumerate(run.points)
    ]


def _fold_line(hidden: list[Point]) -> str:
    reasons = sorted({r for p in hidden for r in p.kept_by})
    outside = sum(1 for p in hidden if not p.kept_by)
    first, last = hidden[0].record.name, hidden[-1].record.name
    span = first if len(hidden) == 1 else f"{first} … {last}"
    why = [f"kept by {','.join(reasons)}"] if reasons else []
    why += [f"{outside} outside policy"] if outside else []
    return f"┆ … {len(hidden)} more ({span}): {'; '.join(why)}"


def _rows(run: Run, metrics: list[str], depth: int, fold: bool, folded: list[int]) -> list[list[str]]:
    """Rows of ``run`` and, above each of its checkpoints, the runs that came from it."""
    rows: list[list[str]] = []
    indent = "│ " * depth
    below: dict[str, list[Run]] = {}
    for child in run.children:
        below.setdefault(child.source.commit if child.source else "", []).append(child)
    newest_first = list(reversed(run.points))
    shown = list(reversed(_visible(run, fold)))
    hidden: list[Point] = []
    for i, point in enumerate(newest_first):
        record = point.record
        if not shown[i]:  # never a branch point: those are always shown
            hidden.append(point)
            continue
        if hidden:
            rows.append([indent + _fold_line(list(reversed(hidden)))] + [""] * (len(metrics) + 5))
            folded.append(len(hidden))
            hidden = []
        for child in below.get(record.commit, []):
            rows += _rows(child, metrics, depth + 1, fold, folded)
        commit = record.commit[:7] + (_source_text(run) if point is run.points[0] else "")
        rows.append(
            [
                f"{indent}{_glyph(i, len(newest_first))} {record.name}" + (" UNSAFE" if point.unsafe else ""),
                str(record.step),
                commit,
                _created(record),
                *[_fmt(record.metrics.get(m)) for m in metrics],
                ",".join(point.kept_by) or "- (outside policy)",
                ",".join(point.marks),
            ]
        )
    return rows


def render_tree(tree: Tree, *, expand: bool = False) -> str:
    """The tree as a table, one block per baseline; ``expand`` lists folded checkpoints too."""
    runs = tree.runs()
    if not runs:
        return "No checkpoint experiments yet: run `dvc exp run` with a checkpoint output."
    metrics = sorted({m for r in runs for p in r.points for m in p.record.metrics})
    header = ["Experiment", "Step", "Commit", "Created", *metrics, "Kept by", "Marks"]
    rows: list[list[str]] = []
    folded: list[int] = []
    for group in tree.groups:
        rows.append([f"{group.label or group.baseline[:7]} ({group.baseline[:7]})", *[""] * (len(header) - 1)])
        for root in group.runs:
            rows += _rows(root, metrics, 0, not expand, folded)
    header = [terminal_safe(cell) for cell in header]
    rows = [[terminal_safe(cell) for cell in row] for row in rows]
    widths = [
        max(len(row[i]) for row in [header, *rows] if not row[0].lstrip("│ ").startswith("┆"))
        for i in range(len(header))
    ]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("─" * w for w in widths))
    for row in rows:
        if row[0].lstrip("│ ").startswith("┆"):
            lines.append(row[0])
        else:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if folded:
        lines.append(f"({sum(folded)} checkpoints folded; `expckpt show --all` lists every one)")
    lines += [terminal_safe(f"{p.record.name}: {p.unsafe}: {ADVICE}") for p in tree.points() if p.unsafe]
    return "\n".join(lines)


def _point_json(point: Point) -> dict[str, Any]:
    record = point.record
    return {
        "name": record.name,
        "step": record.step,
        "commit": record.commit,
        "parent": record.parent,
        "created": _iso(record.time),
        "metrics": {k: (v if math.isfinite(v) else str(v)) for k, v in record.metrics.items()},
        "outs": {p: {"md5": o.md5, "size": o.size} for p, o in record.outs.items()},
        "kept_by": list(point.kept_by),
        "marks": list(point.marks),
        "initialized_from": record.initialized_from.as_dict() if record.initialized_from else None,
        "unsafe": point.unsafe,
    }


def tree_as_json(tree: Tree) -> list[dict[str, Any]]:
    """One object per experiment, parents before the runs that came from them (depth first).

    ``source`` is the checkpoint a run came from and ``link`` how (``resumed``/``initialized``);
    ``resumed_from`` is kept as before (the source of a resumed run); ``branches`` lists the runs
    that came from this one, with the checkpoint each started at.
    """
    out = []
    for group in tree.groups:
        for root in group.runs:
            stack = [(root, 0)]
            while stack:
                run, depth = stack.pop()
                source = (
                    None
                    if run.source_commit is None
                    else {"commit": run.source_commit, "name": run.source.name if run.source else None}
                )
                out.append(
                    {
                        "experiment": run.exp,
                        "baseline": group.baseline,
                        "baseline_name": group.label,
                        "depth": depth,
                        "link": run.link,
                        "source": source,
                        "resumed_from": source if run.link == "resumed" else None,
                        "branches": [
                            {"experiment": c.exp, "at": c.source.name if c.source else None} for c in run.children
                        ],
                        "checkpoints": [_point_json(p) for p in reversed(run.points)],
                    }
                )
                stack += [(c, depth + 1) for c in reversed(run.children)]
    return out
