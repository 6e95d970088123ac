"""``expckpt report --html``: one self-contained page with the checkpoint tree and the curves.

    data = page_data(tree, params=run_params(store, tree), metrics=["acc"])
    Path("expckpt-report.html").write_text(render_page(data))

The page holds everything it needs: Vega and Vega-Lite (vendored, ``expckpt/assets``), its own
script and style, and the data as one ``<script type="application/json">`` block. Nothing is
fetched, so it opens offline from disk.

Everything in the data came from Git (a teammate's pulled refs are anyone's), so it never becomes
markup: the JSON is escaped so no ``<``, ``>`` or ``&`` appears in it, and the page's script puts
every name and value into the DOM as text (``textContent``), never as HTML.

Curves: one chart per metric, every experiment on it; a run that continued from a checkpoint starts
its line at that checkpoint, so lineage reads as one line that forks. NaN/inf values break the
line and get a red rule at their step.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from expckpt.serialize.atomic import atomic_write_bytes
from expckpt.errors import ConfigError
from expckpt.store.gitstore import GitStore
from expckpt.ops.htmlassets import asset, inline_script
from expckpt.ops.lineage import Run, Tree

__all__ = ["DEFAULT_FILE", "check_metrics", "page_data", "render_page", "run_params", "write_report"]

DEFAULT_FILE = "expckpt-report.html"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_PARAM = 200
"""Characters of a param value shown (a long list would swamp the panel)."""


def _flatten(value: object, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}`` (values as short JSON text)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}{key}."))
        return out
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return {prefix.rstrip(".") or "(params)": text[:_MAX_PARAM]}


def _params_at(store: GitStore, commit: str) -> dict[str, str]:
    raw = store.read_file(commit, "params.yaml")
    if raw is None:
        return {}
    try:
        loaded = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        return {}
    return _flatten(loaded) if isinstance(loaded, dict) else {}


def run_params(store: GitStore, tree: Tree) -> dict[str, dict[str, str]]:
    """``params.yaml`` (flattened to dotted keys) at each run's newest checkpoint and at each
    baseline, by commit: one tree read per run, not per checkpoint."""
    commits = {g.baseline for g in tree.groups} | {r.chain.newest.commit for r in tree.runs()}
    commits |= {r.source.commit for r in tree.runs() if r.source is not None}
    return {c: _params_at(store, c) for c in commits if store.has_commit(c)}


def check_metrics(tree: Tree, wanted: Sequence[str] | None) -> list[str]:
    """The metrics to chart: ``wanted``, or every metric logged; an unknown one is a ConfigError
    naming the ones that exist."""
    logged = sorted({m for p in tree.points() for m in p.record.metrics})
    if not wanted:
        return logged
    unknown = [m for m in wanted if m not in logged]
    if unknown:
        raise ConfigError(
            f"no metric named {unknown[0]!r} in these checkpoints; metrics logged: {', '.join(logged) or '(none)'}",
            key="--metric",
            value=unknown[0],
        )
    return list(dict.fromkeys(wanted))


def _value(value: float) -> float | str:
    return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))


def _diff(mine: Mapping[str, str], theirs: Mapping[str, str]) -> dict[str, list[str | None]]:
    keys = sorted(set(mine) | set(theirs))
    return {k: [theirs.get(k), mine.get(k)] for k in keys if mine.get(k) != theirs.get(k)}


def _run_json(run: Run, params: Mapping[str, Mapping[str, str]], depth: int) -> dict[str, Any]:
    mine = params.get(run.chain.newest.commit, {})
    against = run.source.commit if run.source is not None else run.chain.baseline
    return {
        "exp": run.exp,
        "baseline": run.chain.baseline,
        "depth": depth,
        "link": run.link,
        "source": run.source.name if run.source is not None else None,
        "source_commit": run.source_commit,
        "params_diff": _diff(mine, params.get(against, {})) if params else {},
        "params_against": run.source.name if run.source is not None else f"baseline {run.chain.baseline[:7]}",
    }


def page_data(
    tree: Tree,
    *,
    params: Mapping[str, Mapping[str, str]] | None = None,
    metrics: Iterable[str] | None = None,
    title: str = "expckpt report",
) -> dict[str, Any]:
    """The JSON the page draws: groups of runs (tree order), runs, checkpoints and metric names."""
    chosen = check_metrics(tree, list(metrics) if metrics is not None else None)
    runs: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    groups = []
    for group in tree.groups:
        roots = []
        stack: list[tuple[Any, int, int | None]] = [(root, 0, None) for root in reversed(group.runs)]
        while stack:
            run, depth, parent = stack.pop()
            number = len(runs)
            runs.append({**_run_json(run, params or {}, depth), "parent_run": parent, "children": [], "points": []})
            if parent is None:
                roots.append(number)
            else:
                runs[parent]["children"].append(number)
            stack += [(c, depth + 1, number) for c in reversed(run.children)]
            for point in run.points:
                record = point.record
                runs[number]["points"].append(len(points))
                points.append(
                    {
                        "run": number,
                        "name": record.name,
                        "exp": record.exp,
                        "step": record.step,
                        "commit": record.commit,
                        "time": record.time,
                        "size": record.size,
                        "metrics": {m: _value(v) for m, v in record.metrics.items()},
                        "kept_by": list(point.kept_by),
                        "marks": list(point.marks),
                        # quoted: a name from a pulled ref may hold $( ) or ; and this line is pasted into a shell
                        "apply": f"dvc exp apply {shlex.quote(record.name)}",
                    }
                )
        groups.append({"baseline": group.baseline, "label": group.label, "runs": roots})
    where = {p["commit"]: i for i, p in enumerate(points)}
    for entry in runs:  # source_point: index in `points` of the checkpoint the run came from
        entry["source_point"] = where.get(entry["source_commit"]) if entry["source_commit"] else None
    return {
        "title": title,
        "metrics": chosen,
        "monitor": tree.monitor,
        "mode": tree.mode,
        "groups": groups,
        "runs": runs,
        "points": points,
    }


def _json_for_script(data: object) -> str:
    """JSON that cannot close or bend the ``<script>`` element it sits in: ``<``, ``>``, ``&`` and
    the JavaScript line separators are written as ``\\uXXXX`` escapes (the same values once parsed)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def render_page(data: Mapping[str, Any]) -> str:
    """The whole page as one HTML string (the title is escaped by the page's script, not here)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:\">\n"
        "<title>expckpt report</title>\n"
        f"<style>{asset('report.css')}</style>\n</head><body>\n"
        '<header><h1 id="title"></h1><p id="summary"></p></header>\n'
        '<main><section id="tree" aria-label="checkpoint tree"></section>\n'
        '<section id="curves" aria-label="curves"></section>\n'
        '<aside id="detail"><p class="hint">Hover a checkpoint in the tree or on a curve.</p></aside></main>\n'
        f'<script type="application/json" id="expckpt-data">{_json_for_script(data)}</script>\n'
        f"<script>{inline_script(asset('vega.min.js'))}</script>\n"
        f"<script>{inline_script(asset('vega-lite.min.js'))}</script>\n"
        f"<script>{inline_script(asset('report.js'))}</script>\n"
        "</body></html>\n"
    )


def write_report(
    path: Path,
    tree: Tree,
    store: GitStore | None,
    *,
    metrics: Sequence[str] | None = None,
    title: str = "expckpt report",
) -> int:
    """Write the page for ``tree`` to ``path`` (params read from ``store`` when given); returns its size."""
    data = page_data(tree, params=run_params(store, tree) if store is not None else None, metrics=metrics, title=title)
    html = render_page(data).encode()
    atomic_write_bytes(path, html, durable=False)
    return len(html)
