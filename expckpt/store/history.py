"""A run's metric history as a checkpoint commit holds it: dvclive's per-metric TSV files.

dvclive writes ``<live_dir>/plots/metrics/<metric>.tsv`` (columns ``timestamp``, ``step`` and
the metric). The live directory is the one whose ``metrics.json`` the commit's ``dvc.yaml``
declares (``dvclive`` when it declares none). The tree is read as untrusted input: only regular
files, and a row that does not parse is skipped.
"""

from __future__ import annotations

import math

import yaml

from expckpt.store.gitstore import GitStore

__all__ = ["live_dir_of", "metric_history"]

_REGULAR = 0o100000
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def live_dir_of(store: GitStore, commit: str, default: str = "dvclive") -> str:
    """The dvclive directory of the run that made ``commit``."""
    try:
        spec = yaml.load(store.read_file(commit, "dvc.yaml") or b"", Loader=_Loader) or {}
    except yaml.YAMLError:
        return default
    metrics = spec.get("metrics") if isinstance(spec, dict) else None
    for path in metrics if isinstance(metrics, list) else []:
        if isinstance(path, str) and path.endswith("/metrics.json") and ".." not in path.split("/"):
            return path[: -len("/metrics.json")]
    return default


def metric_history(store: GitStore, commit: str, live_dir: str | None = None) -> list[tuple[int, dict[str, float]]]:
    """``(step, {metric: value})`` for every step logged up to ``commit``, by step."""
    base = f"{live_dir or live_dir_of(store, commit)}/plots/metrics"
    steps: dict[int, dict[str, float]] = {}
    for entry in store.list_tree(commit, base):
        if entry.mode & 0o170000 != _REGULAR or entry.data is None or not entry.path.endswith(".tsv"):
            continue
        metric = entry.path[len(base) + 1 : -len(".tsv")]
        column = metric.rsplit("/", 1)[-1]
        lines = entry.data.decode(errors="replace").splitlines()
        header = lines[0].split("\t") if lines else []
        if "step" not in header or column not in header:
            continue
        for line in lines[1:]:
            cells = dict(zip(header, line.split("\t")))
            try:
                step, value = int(cells["step"]), float(cells[column])
            except (KeyError, ValueError):
                continue
            if step >= 0 and (math.isfinite(value) or math.isnan(value) or math.isinf(value)):
                steps.setdefault(step, {})[metric] = value
    return sorted(steps.items())
