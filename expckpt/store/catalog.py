"""Finding checkpoints: by experiment, by name, the last one, the last one at or before a step.

catalog = Catalog.load(store)
catalog.last("tut")                  # newest checkpoint of experiment tut
catalog.last_at_or_before("tut", 7)  # what Julia's Checkpointer calls index_of_last_checkpoint_prior_to
catalog.resolve("tut@3")             # by name or commit sha; suggests close names otherwise
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from expckpt.errors import UnknownCheckpointError
from expckpt.store.gitstore import GitStore
from expckpt.store.records import CheckpointRecord, load_records

__all__ = ["Catalog", "Chain"]


@dataclass(frozen=True)
class Chain:
    """The checkpoints of one experiment (one baseline, one name), oldest step first."""

    baseline: str
    exp: str
    records: tuple[CheckpointRecord, ...]

    @property
    def newest(self) -> CheckpointRecord:
        return self.records[-1]

    @property
    def origin(self) -> str | None:
        """Commit of the checkpoint this experiment continued from, if it did.

        A run's first checkpoint records the branch point as its parent, and every checkpoint
        of the run as its ``origin``: the mark survives retention removing the first one.
        """
        first = self.records[0]
        return first.parent if first.resumed else first.origin


class Catalog:
    """All checkpoint experiments of a repository, indexed for lookups (no I/O after ``load``)."""

    def __init__(self, records: Iterable[CheckpointRecord]) -> None:
        self.records = sorted(records, key=lambda r: (r.ref.baseline, r.exp, r.step))
        self._by_commit = {r.commit: r for r in self.records}

    @classmethod
    def load(cls, store: GitStore, baselines: Iterable[str] | None = None) -> Catalog:
        return cls(load_records(store, baselines))

    def chains(self) -> list[Chain]:
        """One chain per experiment, the most recently written first."""
        grouped: dict[tuple[str, str], list[CheckpointRecord]] = {}
        for record in self.records:
            grouped.setdefault((record.ref.baseline, record.exp), []).append(record)
        chains = [Chain(b, e, tuple(rs)) for (b, e), rs in grouped.items()]
        return sorted(chains, key=lambda c: c.newest.time, reverse=True)

    def of(self, exp: str, baseline: str | None = None) -> list[CheckpointRecord]:
        """Every checkpoint of experiment ``exp``, oldest step first."""
        return [r for r in self.records if r.exp == exp and (baseline is None or r.ref.baseline == baseline)]

    def last(self, exp: str | None = None) -> CheckpointRecord | None:
        """The newest checkpoint (of ``exp``, or of any experiment)."""
        pool = self.of(exp) if exp else self.records
        return max(pool, key=lambda r: (r.time, r.step), default=None)

    def last_at_or_before(self, exp: str, step: int) -> CheckpointRecord | None:
        """The checkpoint of ``exp`` with the highest step that is ``<= step``."""
        pool = [r for r in self.of(exp) if r.step <= step]
        return max(pool, key=lambda r: r.step, default=None)

    def by_commit(self, commit: str) -> CheckpointRecord | None:
        return self._by_commit.get(commit)

    def resolve(self, name: str) -> CheckpointRecord:
        """A checkpoint by name (``tut@3``) or by (short) commit sha."""
        named = [r for r in self.records if r.name == name]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            return max(named, key=lambda r: r.time)
        if len(name) >= 4 and all(c in "0123456789abcdef" for c in name):
            hits = [r for r in self.records if r.commit.startswith(name)]
            if len(hits) == 1:
                return hits[0]
        raise self.unknown(name)

    def unknown(self, name: str) -> UnknownCheckpointError:
        names = sorted({r.name for r in self.records} | {r.exp for r in self.records})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see `expckpt list`"
        return UnknownCheckpointError(f"no checkpoint named {name!r}; {hint}", ref=name)
