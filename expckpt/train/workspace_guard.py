"""The checkpoint outputs in the workspace are expckpt's alone during a run.

A user's own ``torch.save(..., "model.pt")`` or a ``dvc exp apply`` in the middle of a run would
otherwise be published as the next checkpoint, or be what ``dvc exp run`` commits at the end. The
guard remembers every output's stat as expckpt last left it (``expckpt.serialize.dirout.output_stat``: a
directory output is stat-ed file by file), refuses to save over a change, and when the run ends
puts the last checkpoint's outputs and dvc.lock back if something replaced them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from expckpt.serialize.dirout import output_stat
from expckpt.errors import CheckpointError
from expckpt.store.records import CheckpointRecord
from expckpt.store.session import SessionNote
from expckpt.train.wiring import Wiring

__all__ = ["WorkspaceGuard"]

Stats = tuple[Any, ...]


class WorkspaceGuard:
    """The outputs' stats as expckpt last wrote them, and what to do when they changed."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.noted: Stats | None = None
        """None until expckpt restored or wrote an output in this run."""

    def stats(self) -> Stats | None:
        """The outputs' stats now (None while none exists)."""
        stats = tuple(output_stat(o.path) for o in self.wiring.outputs)
        return None if all(st is None for st in stats) else stats

    def note_now(self) -> None:
        self.noted = self.stats()

    def note_published(self) -> None:
        """After a publish: the stats the committer noted right after its renames, not whatever
        is there now (something may already have replaced a file since)."""
        w = self.wiring
        notes = [SessionNote.read(w.workspace, o.rel_path) for o in w.outputs] if w.committer else [None]
        self.noted = self.stats() if None in notes else tuple(n.stat_key() for n in notes if n is not None)

    def changed(self) -> bool:
        return self.noted is not None and self.stats() != self.noted

    def check(self, *, busy: bool, last: CheckpointRecord | None) -> None:
        """Stop if something else wrote a checkpoint output since expckpt last did (checked when
        no background checkpoint is in flight: that one is about to replace the outputs)."""
        if busy or not self.changed():
            return
        rel = self.wiring.rel_path
        since = f" since {last.name}" if last else ""
        raise CheckpointError(
            f"{rel} was changed by something other than expckpt{since} (your own"
            f" torch.save(..., {rel!r})? a `dvc exp apply` during the run?); expckpt writes"
            " that file itself: save anything else to another path, then run again"
        )

    def put_back(self, record: CheckpointRecord | None, echo: Callable[[str], None]) -> None:
        """``dvc exp run`` commits the workspace when training ends: make sure it holds the last
        checkpoint's outputs and dvc.lock, even if something replaced them during the run."""
        c = self.wiring.committer
        if c is None or record is None or not self.changed():
            return
        outs = [(o, record.outs.get(o.rel_path)) for o in self.wiring.outputs]
        if any(h is None or not c.cache.has(h.md5) for _, h in outs):
            return
        for spec, h in outs:
            assert h is not None
            c.cache.checkout(h.md5, spec.path)
        c.restore_lock(record)
        names = ", ".join(o.rel_path for o in self.wiring.outputs)
        echo(f"expckpt: warning: {names} was changed during the run; put back {record.name}'s")
