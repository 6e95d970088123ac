"""What a checkpoint commit records about itself, and the catalog of all checkpoints.

Each checkpoint commit's message carries one ``expckpt-meta:`` line of JSON (experiment, step,
parent checkpoint, output hashes, metrics, time). Listing every checkpoint is then a single
``git for-each-ref`` call, with no tree reads: that is what keeps ``expckpt show`` fast.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from expckpt.gitstore import GitStore
from expckpt.refs import EXPS_PREFIX, CheckpointRef

__all__ = ["CheckpointRecord", "OutputHash", "load_records", "format_message", "parse_message"]

_META = "expckpt-meta: "
_HASH = re.compile(r"[0-9a-f]{32}(\.dir)?")


@dataclass(frozen=True)
class OutputHash:
    """A checkpoint output's DVC hash (a directory's ends in ``.dir`` and counts its files)."""

    md5: str
    size: int
    nfiles: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"md5": self.md5, "size": self.size, **({"nfiles": self.nfiles} if self.nfiles is not None else {})}


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint experiment: where it is and what it holds."""

    ref: CheckpointRef
    commit: str
    parent: str | None
    """Commit of the checkpoint this one continued from (``None`` for a fresh start)."""
    outs: Mapping[str, OutputHash]
    metrics: Mapping[str, float]
    time: float
    params: Mapping[str, object] = field(default_factory=dict)
    resumed: bool = False
    """True for the first checkpoint of a run that continued from ``parent`` (a branch point)."""

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def exp(self) -> str:
        return self.ref.exp

    @property
    def step(self) -> int:
        return self.ref.step

    @property
    def size(self) -> int:
        return sum(out.size for out in self.outs.values())


def _finite_or_str(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def format_message(
    ref: CheckpointRef,
    *,
    parent: str | None,
    outs: Mapping[str, OutputHash],
    metrics: Mapping[str, float],
    time: float,
    resumed: bool = False,
) -> str:
    """The commit message of a checkpoint: DVC's subject line plus one JSON metadata line."""
    meta = {
        "v": 1,
        "exp": ref.exp,
        "step": ref.step,
        "parent": parent,
        "resumed": resumed,
        "outs": {path: o.as_dict() for path, o in outs.items()},
        "metrics": {k: _finite_or_str(v) for k, v in metrics.items()},
        "time": round(time, 3),
    }
    digest = next(iter(outs.values())).md5 if outs else "0" * 32
    return (
        f"dvc: commit experiment {digest}\n\n"
        f"Checkpoint {ref.name} of experiment {ref.exp}, written by expckpt.\n\n"
        f"{_META}{json.dumps(meta, sort_keys=True, separators=(',', ':'))}\n"
    )


def _metric(value: object) -> float:
    if isinstance(value, str):
        return float(value)  # 'nan', 'inf', '-inf'
    return float(value)  # type: ignore[arg-type]


def parse_message(ref: CheckpointRef, commit: str, message: str) -> CheckpointRecord | None:
    """Rebuild a record from a commit message; ``None`` if expckpt did not write it."""
    for line in message.splitlines():
        if line.startswith(_META):
            try:
                meta = json.loads(line[len(_META) :])
                outs = {
                    p: OutputHash(str(o["md5"]), int(o["size"]), int(o["nfiles"]) if o.get("nfiles") is not None else None)
                    for p, o in meta["outs"].items()
                }
                if not all(_HASH.fullmatch(o.md5) for o in outs.values()):
                    return None  # read from Git: a hash becomes a cache path, so it must be one
                metrics = {
                    k: _metric(v)
                    for k, v in meta.get("metrics", {}).items()
                    if isinstance(v, (int, float, str))
                }
                return CheckpointRecord(
                    ref=ref,
                    commit=commit,
                    parent=meta.get("parent"),
                    outs=outs,
                    metrics=metrics,
                    time=float(meta.get("time", 0.0)),
                    resumed=bool(meta.get("resumed", False)),
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
    return None


def load_records(store: GitStore, baselines: Iterable[str] | None = None) -> list[CheckpointRecord]:
    """Every checkpoint expckpt wrote in this repository (optionally only for some baselines)."""
    wanted = None if baselines is None else set(baselines)
    records = []
    for entry in store.list_refs(EXPS_PREFIX):
        ref = CheckpointRef.parse(entry.ref)
        if ref is None or (wanted is not None and ref.baseline not in wanted):
            continue
        record = parse_message(ref, entry.commit, entry.message)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (r.ref.baseline, r.exp, r.step))
    return records
