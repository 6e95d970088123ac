"""Branch points: checkpoints other experiments were continued or started from.

A checkpoint is a branch point when a checkpoint of *another* experiment names it as its
``parent`` (``dvc exp apply <exp>@<step> && dvc exp run``: the new chain continues it) or as
its ``initialized_from`` (``checkpoint.init_from``: a fresh trial from its weights). A chain's
own parents (``tut@4`` continues ``tut@3``) do not count. Retention during training and
``expckpt gc`` keep branch points, so a lineage never points at a checkpoint whose weights are
gone, unless ``expckpt gc --include-branch-points`` is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from expckpt.store.records import CheckpointRecord

__all__ = ["branch_points", "keep_branch_points"]


def branch_points(records: Iterable[CheckpointRecord]) -> dict[str, list[str]]:
    """commit of each branch point -> the experiments that depend on it (sorted, each once)."""
    records = list(records)
    by_commit = {r.commit: r for r in records}
    found: dict[str, set[str]] = {}
    for r in records:
        for source in _sources(r, by_commit):
            found.setdefault(source.commit, set()).add(r.exp)
    return {commit: sorted(exps) for commit, exps in found.items()}


def _sources(record: CheckpointRecord, by_commit: dict[str, CheckpointRecord]) -> list[CheckpointRecord]:
    """The checkpoints of other experiments ``record`` continues or was started from."""
    found = []
    parent = by_commit.get(record.parent) if record.parent else None
    if parent is not None and (parent.exp != record.exp or parent.ref.baseline != record.ref.baseline):
        found.append(parent)
    source = by_commit.get(record.initialized_from.commit) if record.initialized_from else None
    if source is not None:
        found.append(source)
    return found


def keep_branch_points(
    remove: Sequence[CheckpointRecord], keep: Sequence[CheckpointRecord]
) -> tuple[list[CheckpointRecord], list[CheckpointRecord], dict[str, list[str]]]:
    """Move to ``keep`` every checkpoint of ``remove`` that an experiment with a kept checkpoint
    depends on (through any of its checkpoints, kept or not: its first one, which names where it
    branched, may itself be going), until nothing moves. Returns (remove, keep, name -> the
    dependent experiments of each checkpoint moved)."""
    remove, keep = list(remove), list(keep)
    by_commit = {r.commit: r for r in [*keep, *remove]}
    moved: dict[str, list[str]] = {}
    while True:
        kept_chains = {(r.ref.baseline, r.exp) for r in keep}
        kept_commits = {r.commit for r in keep}
        needed: dict[str, set[str]] = {}
        for r in [*keep, *remove]:
            if (r.ref.baseline, r.exp) in kept_chains:
                for source in _sources(r, by_commit):
                    if source.commit not in kept_commits:
                        needed.setdefault(source.commit, set()).add(r.exp)
        if not needed:
            return remove, keep, moved
        for record in [r for r in remove if r.commit in needed]:
            remove.remove(record)
            keep.append(record)
            moved[record.name] = sorted(needed[record.commit])
