"""Rank 0's side of a save: complete temp files become the outputs and ``<exp>@<step>``, then
retention and the pusher see the new checkpoint; in asynchronous mode all of it on a background
thread, the training step only waiting for the capture.

The core (``expckpt.train.checkpointer``) decides *whether* to save and hands the payload here;
the publishing order itself is the committer's (``expckpt.publish.committer``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from expckpt.policy.config import CheckpointConfig
from expckpt.publish.pusher import Pusher
from expckpt.publish.remote import PushTarget
from expckpt.publish.retention import RunRetention
from expckpt.serialize.writer import AsyncWriter
from expckpt.store.outside import note_outside_step
from expckpt.store.records import CheckpointRecord, InitializedFrom
from expckpt.store.session import SessionNote
from expckpt.train.handlers import Handler
from expckpt.train.wiring import Wiring
from expckpt.train.workspace_guard import WorkspaceGuard

__all__ = ["Job", "Publisher"]

Job = tuple[int, Mapping[str, float], str | None, bool]
"""What a save publishes besides its files: step, metrics, the improvement line, paused."""


class Publisher:
    """Publishes a run's checkpoints (rank 0 only), now or on the background writer."""

    def __init__(
        self,
        wiring: Wiring,
        config: CheckpointConfig,
        handler: Handler,
        echo: Callable[[str], None],
        push: PushTarget | None = None,
    ) -> None:
        self.wiring = wiring
        self.config = config
        self.handler = handler
        self.echo = echo
        self.guard = WorkspaceGuard(wiring)
        self.parent: str | None = None
        """Commit of the checkpoint the next one continues from."""
        self.last_record: CheckpointRecord | None = None
        self.initialized_from: InitializedFrom | None = None
        self._writer: AsyncWriter | None = None
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        c = wiring.committer
        self.retention = RunRetention(config.keep_policy(), c.store, echo, free=wiring.free) if c else None
        self.pusher = Pusher(push, c.project.root, echo) if push and c else None

    @property
    def busy(self) -> bool:
        """A background checkpoint is being written (it is about to replace the outputs)."""
        return self._inflight > 0

    def check_workspace(self) -> None:
        """Stop if something else wrote a checkpoint output since expckpt last did."""
        self.guard.check(busy=self.busy, last=self.last_record)

    def submit(self, payload: Any, job: Job) -> bool:
        """Hand the captured state to the background writer (False: skipped as busy)."""
        if self._writer is None:
            self._writer = AsyncWriter(self._write_job, when_busy=self.config.when_busy, echo=self.echo)
        with self._inflight_lock:
            self._inflight += 1
        if self._writer.submit(payload, lambda snapshot: (snapshot, *job)):
            return True
        with self._inflight_lock:
            self._inflight -= 1
        return False

    def _write_job(self, job: tuple[Any, int, Mapping[str, float], str | None, bool]) -> None:
        payload, step, metrics, note, paused = job
        try:
            self.publish(self.handler.write(payload), step, metrics, note, paused)
        finally:
            with self._inflight_lock:
                self._inflight -= 1

    def publish(
        self, items: list[Any], step: int, metrics: Mapping[str, float], note: str | None, paused: bool = False
    ) -> None:
        """Complete temp files become the outputs and, inside ``dvc exp run``, ``<exp>@<step>``."""
        w = self.wiring
        try:
            if w.committer is None:
                for item in items:
                    item.publish()
                SessionNote.forget_reset(w.workspace, w.rel_path)
                note_outside_step(w.workspace, w.rel_path, w.path, step)
            else:
                live_files = w.committer.read_live_files()
                record = w.committer.publish(
                    items,
                    step=step,
                    metrics=metrics,
                    live_files=live_files,
                    parent=self.parent,
                    settings=self.config,
                    initialized_from=self.initialized_from,
                    paused=paused,
                )
        except BaseException:
            for item in items:
                item.discard()
            raise
        finally:
            self.handler.done()
        self.handler.published(items)
        self.guard.note_published()
        if note:
            self.echo(note)
        if w.committer is None:
            return
        self.parent, self.last_record = record.commit, record
        self.echo(f"Checkpoint experiment '{record.name}' ({record.commit[:7]})")
        if self.retention is not None:
            self.retention.add(record)
        if self.pusher is not None:  # after retention: a checkpoint it dropped is not pushed
            self.pusher.submit(record)

    def publish_unnoted(self, items: list[Any]) -> None:
        """``every: 0``: the outputs only, no checkpoint experiment (DVC's end-of-run commit takes them)."""
        try:
            for item in items:
                item.publish()
        finally:
            self.handler.done()
        self.handler.published(items)
        self.guard.note_now()

    def wait(self) -> None:
        """Wait until every background checkpoint is published (re-raises a failure)."""
        if self._writer is not None:
            self._writer.drain()

    def close(self, *, failed: bool) -> None:
        """Stop the writer; after a failure leave the last complete checkpoint in the workspace."""
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if failed:
                self.guard.put_back(self.last_record, self.echo)
        finally:
            if self.pusher is not None:  # bounded wait; never fails the run
                self.pusher.close()
