"""Retention during training: drop this run's checkpoints that the keep policy no longer keeps.

Runs after each published checkpoint. Refs go first (compare-and-swap: a ref that another
process already removed is fine, one that now names another commit is left alone and said
once), then the cache objects of the dropped checkpoints that nothing else needs, so the cache
stays near (kept + 1) checkpoints in size while training goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from expckpt.errors import RefConflictError
from expckpt.gitstore import GitStore
from expckpt.policy import CheckpointInfo, KeepPolicy
from expckpt.records import CheckpointRecord

__all__ = ["RunRetention"]

Freer = Callable[[Sequence[CheckpointRecord]], int]


class RunRetention:
    """The checkpoints one run published, and the policy that decides which stay."""

    def __init__(self, policy: KeepPolicy, store: GitStore, echo: Callable[[str], None], free: Freer | None = None) -> None:
        self.policy = policy
        self.store = store
        self.echo = echo
        self.free = free
        self.chain: list[CheckpointRecord] = []

    def add(self, record: CheckpointRecord) -> list[CheckpointRecord]:
        """Take in a new checkpoint and apply the policy; return the checkpoints dropped."""
        self.chain.append(record)
        infos = [CheckpointInfo.of(r) for r in self.chain]
        kept, dropped = [], []
        for rec, keep in zip(self.chain, self.policy.should_keep(infos)):
            (kept if keep else dropped).append(rec)
        self.chain = kept
        removed = [rec for rec in dropped if self._delete(rec)]
        if removed and self.free is not None:
            self.free(removed)
        return removed

    def _delete(self, record: CheckpointRecord) -> bool:
        try:
            deleted = self.store.delete_ref(record.ref.ref, record.commit)
        except RefConflictError as exc:
            self.echo(f"expckpt: warning: kept {record.name}: {exc}")
            return False
        if deleted is False:  # the ref moved (another run); never delete what is not ours
            current = self.store.get_ref(record.ref.ref)
            if current is None:
                return True
            self.echo(f"expckpt: warning: kept {record.name}: it now names commit {current[:7]}, not this run's")
            return False
        return True
