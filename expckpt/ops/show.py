"""Checkpoint chains for people (``╓ ╟ ╨``, as DVC 2 drew them) and for machines (JSON).

Every cell of the table is passed through ``terminal_safe``: metric names, branch and tag names
come from Git, and a pulled ref is anyone's. JSON needs nothing more (``json.dumps`` escapes
control characters).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from expckpt.store.branchpoints import branch_points
from expckpt.store.catalog import Catalog, Chain
from expckpt.store.records import CheckpointRecord
from expckpt.text import terminal_safe
from expckpt.ops.unsafe import ADVICE

__all__ = ["chains_as_json", "render_chains"]


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


def _origin(chain: Chain, catalog: Catalog) -> str | None:
    if chain.origin is None:
        return None
    parent = catalog.by_commit(chain.origin)
    return f"{chain.origin[:7]}" + (f" {parent.name}" if parent else "")


def render_chains(catalog: Catalog, labels: Mapping[str, str], unsafe: Mapping[str, str] | None = None) -> str:
    """A table: one block per baseline, one chain per experiment, newest checkpoint first;
    ``unsafe`` (commit -> why, ``expckpt.ops.unsafe``) marks checkpoints not to apply."""
    unsafe = unsafe or {}
    chains = catalog.chains()
    if not chains:
        return "No checkpoint experiments yet: run `dvc exp run` with a checkpoint output."
    metrics = sorted({m for r in catalog.records for m in r.metrics})
    points = branch_points(catalog.records)
    header = ["Experiment", "Step", "Commit", "Created", *metrics]
    rows: list[list[str]] = []
    for baseline in sorted({c.baseline for c in chains}, key=lambda b: b not in labels):
        rows.append([f"{labels.get(baseline, baseline[:7])} ({baseline[:7]})", "", "", "", *[""] * len(metrics)])
        for chain in (c for c in chains if c.baseline == baseline):
            newest_first = list(reversed(chain.records))
            for i, record in enumerate(newest_first):
                commit = record.commit[:7]
                if record is chain.records[0] and chain.origin:
                    commit += f" ({_origin(chain, catalog)})"
                if record is chain.records[0] and record.initialized_from:
                    commit += f" (init from {record.initialized_from.name} {record.initialized_from.commit[:7]})"
                rows.append(
                    [
                        f"{_glyph(i, len(newest_first))} {record.name}"
                        + (" (paused)" if record.paused else "")
                        + (f" (branch point of {', '.join(points[record.commit])})" if record.commit in points else ""),
                        str(record.step),
                        commit,
                        _created(record),
                        *[_fmt(record.metrics.get(m)) for m in metrics],
                    ]
                )
    header = [terminal_safe(cell) for cell in header]
    rows = [[terminal_safe(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("─" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += [terminal_safe(f"{r.name}: {unsafe[r.commit]}: {ADVICE}") for r in catalog.records if r.commit in unsafe]
    return "\n".join(lines)


def _record_json(record: CheckpointRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "step": record.step,
        "commit": record.commit,
        "parent": record.parent,
        "created": _iso(record.time),
        "metrics": {k: (v if math.isfinite(v) else str(v)) for k, v in record.metrics.items()},
        "outs": {p: {"md5": o.md5, "size": o.size} for p, o in record.outs.items()},
        "paused": record.paused,
        "initialized_from": record.initialized_from.as_dict() if record.initialized_from else None,
    }


def chains_as_json(catalog: Catalog, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    points = branch_points(catalog.records)
    out = []
    for chain in catalog.chains():
        parent = catalog.by_commit(chain.origin) if chain.origin else None
        out.append(
            {
                "experiment": chain.exp,
                "baseline": chain.baseline,
                "baseline_name": labels.get(chain.baseline),
                "resumed_from": None
                if chain.origin is None
                else {"commit": chain.origin, "name": parent.name if parent else None},
                "checkpoints": [
                    {**_record_json(r), "branch_point_of": points.get(r.commit, [])} for r in reversed(chain.records)
                ],
            }
        )
    return out
