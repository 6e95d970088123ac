"""Retention during training: drop this run's checkpoints that the keep policy no longer keeps.

Runs after each published checkpoint. Refs go first (compare-and-swap: a ref that another
process already removed is fine, one that now names another commit is left alone and said
once), then the cache objects of the dropped checkpoints that nothing else needs, so the cache
stays near (kept + 1) checkpoints in size while training goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from expckpt.store.branchpoints import branch_points
from expckpt.store.catalog import Catalog
from expckpt.policy.config import CheckpointConfig
from expckpt.errors import GitLockedError, RefConflictError
from expckpt.store.gitstore import GitStore
from expckpt.policy.policy import CheckpointInfo, KeepPolicy
from expckpt.store.records import CheckpointRecord, load_records
from expckpt.store.refs import EXPS_PREFIX

__all__ = ["RunRetention", "interrupted_run"]

Freer = Callable[[Sequence[CheckpointRecord]], int]


class RunRetention:
    """The checkpoints one run published, and the policy that decides which stay."""

    def __init__(
        self, policy: KeepPolicy, store: GitStore, echo: Callable[[str], None], free: Freer | None = None
    ) -> None:
        self.policy = policy
        self.store = store
        self.echo = echo
        self.free = free
        self.chain: list[CheckpointRecord] = []
        self._exp: str | None = None
        self._said: set[str] = set()

    def adopt(self, records: Sequence[CheckpointRecord]) -> None:
        """Take in the checkpoints of the interrupted run this one continues (``interrupted_run``):
        its retention covers them, as if the run had not been interrupted."""
        self.chain = [*records, *self.chain]

    def add(self, record: CheckpointRecord) -> list[CheckpointRecord]:
        """Take in a new checkpoint and apply the policy; return the checkpoints dropped."""
        self.chain.append(record)
        self._exp = record.exp
        infos = [CheckpointInfo.of(r) for r in self.chain]
        kept, removed = [], []
        points: dict[str, list[str]] | None = None
        for rec, keep in zip(self.chain, self.policy.should_keep(infos)):
            if not keep:  # another experiment continued or started from it: keep it (a branch point)
                points = branch_points(load_records(self.store)) if points is None else points
                keep = self._branch_point(rec, points)
            if keep:
                kept.append(rec)
                continue
            outcome = self._delete(rec)
            if outcome == "removed":
                removed.append(rec)
            elif outcome == "retry":
                kept.append(rec)  # a Git lock was busy: try again after the next checkpoint
        self.chain = kept
        if removed and self.free is not None:
            self.free(removed)
        return removed

    def _branch_point(self, record: CheckpointRecord, points: dict[str, list[str]]) -> bool:
        """Another experiment continued or started from ``record``; this run continuing an
        interrupted one (``adopt``) makes none of that run's checkpoints a branch point."""
        others = [exp for exp in points.get(record.commit, []) if exp != self._exp]
        if not others:
            return False
        if record.name not in self._said:
            self._said.add(record.name)
            self.echo(f"expckpt: kept {record.name} outside the keep policy: a branch point of {', '.join(others)}")
        return True

    def _delete(self, record: CheckpointRecord) -> str:
        """``"removed"``, ``"kept"`` (the ref moved: not ours any more) or ``"retry"``."""
        try:
            self.store.delete_ref(record.ref.ref, record.commit)
        except RefConflictError as exc:
            if exc.actual is None:
                return "removed"  # already gone (dvc exp remove): nothing left to do
            self.echo(f"expckpt: warning: kept {record.name}: it now names commit {exc.actual[:7]}, not this run's")
            return "kept"
        except GitLockedError as exc:
            self.echo(f"expckpt: warning: kept {record.name} for now: {exc}")
            return "retry"
        return "removed"


def interrupted_run(store: GitStore, resumed: CheckpointRecord, settings: CheckpointConfig) -> list[CheckpointRecord]:
    """The checkpoints of the run that ``resumed`` ended, when that run was interrupted (killed,
    failed: DVC made no experiment commit ``<exp>`` for it), ``resumed`` is its newest checkpoint
    and it recorded the same checkpoint ``settings`` as this run.

    A run resuming from there is that run's continuation (``dvc exp run`` after a kill), so its
    retention keeps what an uninterrupted run would have kept. A finished experiment, or a
    checkpoint applied from the middle of one, is a branch point: its checkpoints stay its own.
    """
    base = resumed.ref.baseline
    if store.get_ref(f"{EXPS_PREFIX}{base[:2]}/{base[2:]}/{resumed.exp}") is not None:
        return []
    chain = Catalog.load(store, [base]).of(resumed.exp)
    if not chain or chain[-1].commit != resumed.commit or chain[-1].settings != settings:
        return []
    return chain
