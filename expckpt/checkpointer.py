"""The training-side orchestrator: restore where training stopped, save each completed step.

    checkpointer = Checkpointer.from_env(config=params.get("checkpoint"))
    checkpointer.restore(state)                       # None on a fresh start
    for step in range(state.step + 1, total):
        ...
        if checkpointer.save(state, step, metrics).stop:
            break
    checkpointer.close(state)                         # final save if skipped, then wait

It wires the parts and decides nothing itself: the save policy says when (the final and the
stop save are policies too), the training watch says how training goes, the committer publishes
(inside ``dvc exp run`` every checkpoint becomes an experiment ref ``<exp>@<step>``), retention
drops what the keep policy no longer keeps. Outside ``dvc exp run`` the file is still written
atomically and resumed from, so ``python train.py`` works the same way.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expckpt.checkpoint_file import check_architecture, load_checkpoint, write_temp
from expckpt.config import CheckpointConfig
from expckpt.errors import CheckpointError
from expckpt.policy import CheckpointInfo, SaveContext
from expckpt.pusher import Pusher
from expckpt.records import CheckpointRecord
from expckpt.remote import PushTarget, resolve_target
from expckpt.report import improvement_line
from expckpt.resume import ResumePoint, Resumed, find_resume_point, remove_stale_temps, restore_live_files
from expckpt.resume import refuse_lost_checkpoint
from expckpt.retention import RunRetention
from expckpt.session import SessionNote
from expckpt.signals import GracefulStop
from expckpt.state import TrainingState
from expckpt.watch import TrainingWatch
from expckpt.wiring import Wiring, wire
from expckpt.writer import AsyncWriter

__all__ = ["Checkpointer", "Decision", "Resumed", "StopTraining"]


class StopTraining(Exception):
    """Raised by ``CheckpointLive.next_step`` outside ``live.steps()`` to end training cleanly."""


@dataclass(frozen=True)
class Decision:
    """What ``Checkpointer.save`` did with a completed step."""

    saved: bool
    stop: str | None = None
    """Why training should stop now (``on_divergence: stop``), or None to go on."""


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            flat[name] = float(value)
    return flat


class Checkpointer:
    """Saves and restores one checkpoint file; publishes each save as a checkpoint experiment."""

    def __init__(self, wiring: Wiring, config: CheckpointConfig, *, echo: Callable[[str], None] = print,
                 push: PushTarget | None = None) -> None:
        self.wiring = wiring
        self.config = config
        self.echo = echo
        self.watch = TrainingWatch(
            monitor=config.monitor, mode=config.mode, divergence_metric=config.divergence_metric,
            divergence_steps=config.divergence_steps, patience=config.patience,
            stop_on_problem=config.on_divergence == "stop")
        self.stop = GracefulStop(self.describe_last, settle=self.wait)
        self.resumed: Resumed | None = None
        self.parent: str | None = None
        self.last_record: CheckpointRecord | None = None
        self._save_policy = config.save_policy(start=time.time())
        self._last_saved: CheckpointInfo | None = None
        self._unsaved: tuple[int, dict[str, float]] | None = None
        self._metrics_checked = False
        self._file_stat: tuple[int, int, int] | None = None
        self._writer: AsyncWriter | None = None
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._retention = (
            RunRetention(config.keep_policy(), wiring.committer.store, echo, free=wiring.free)
            if wiring.committer is not None else None
        )
        self._pusher = Pusher(push, wiring.committer.project.root, echo) if push and wiring.committer else None

    @classmethod
    def from_env(
        cls,
        path: str | os.PathLike[str] | None = None,
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        live_dir: str = "dvclive",
        env: Mapping[str, str] | None = None,
    ) -> Checkpointer:
        """Set up for this process. ``path`` defaults to the stage's ``checkpoint: true`` output."""
        if not isinstance(config, CheckpointConfig):
            config = CheckpointConfig.from_params(config)
        wiring = wire(path, live_dir=live_dir, env=env)
        c = wiring.committer  # checkpoint.push / DVC_EXP_AUTO_PUSH: checked before training starts
        push, warning = resolve_target(c.store, c.project.root, config.push, env) if c else (None, None)
        checkpointer = cls(wiring, config, push=push)
        if warning:
            checkpointer.echo(warning)
        return checkpointer

    # -- compatibility with expckpt 0.1 ---------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.wiring.path

    @property
    def rel_path(self) -> str:
        return self.wiring.rel_path

    @property
    def live_dir(self) -> str:
        return self.wiring.live_dir

    @property
    def committer(self) -> Any:
        return self.wiring.committer

    # -- resume ----------------------------------------------------------------------------------
    def restore(self, state: TrainingState, *, defer_rng: bool = False) -> Resumed | None:
        """Load the checkpoint file into ``state`` if there is one; ``None`` means a fresh start.

        The rules for which checkpoint that is are in ``expckpt.resume``. With ``defer_rng`` the
        RNG states wait for ``state.apply_rng()`` (``CheckpointLive`` calls it at the first step).
        Inside ``dvc exp run``, a run whose next steps are already checkpoints of another run
        with the same experiment name is refused here, before any training.
        """
        resumed = self._restore(state, defer_rng)
        if self.wiring.committer is not None:
            self.wiring.committer.check_name(state.step + 1)
        return resumed

    def _restore(self, state: TrainingState, defer_rng: bool) -> Resumed | None:
        w = self.wiring
        remove_stale_temps(w.path)
        if not w.path.exists():
            if w.committer is not None:  # a lost checkpoint is not a fresh start
                refuse_lost_checkpoint(w.path, w.rel_path, w.workspace, w.committer.store, w.committer.cache)
            return None
        if SessionNote.was_reset(w.workspace, w.rel_path):
            self.echo(f"expckpt: starting from scratch (expckpt reset); ignoring {w.rel_path} as DVC checked it out")
            return None
        point = ResumePoint(None, rolled_back=False)
        if w.committer is not None and w.path.exists():
            c = w.committer
            point = find_resume_point(w.path, w.rel_path, w.workspace, c.store, c.cache, self.echo)
        if not w.path.exists():
            return None
        payload = load_checkpoint(w.path)
        for name, module in state.modules().items():
            check_architecture(module, payload.get(name), w.path)
        for line in state.restore(payload, defer_rng=defer_rng):
            self.echo(line)
        self.watch.load_state_dict(state.library.get("watch") or {})
        if point.record is not None:
            assert w.committer is not None
            self.parent = point.record.commit
            self.last_record = point.record
            restore_live_files(w.committer.store, point.record.commit, w.workspace, w.live_dir)
        self._last_saved = CheckpointInfo(step=state.step, metrics={}, time=time.time())
        self._file_stat = _stat(w.path)
        self.resumed = Resumed(step=state.step, record=point.record, rolled_back=point.rolled_back)
        origin = f" ({point.record.name})" if point.record else ""
        self.echo(f"Resuming from {w.rel_path}{origin}: {state.step + 1} steps done")
        return self.resumed

    # -- training hooks --------------------------------------------------------------------------
    def save(self, state: TrainingState, step: int, metrics: Mapping[str, Any]) -> Decision:
        """Step ``step`` completed with ``metrics``: save it if the save policy says so."""
        flat = _flatten(metrics)
        self._check_metrics(flat)
        state.step = step
        seen = self.watch.observe(step, flat)
        for warning in seen.warnings:
            self.echo(f"expckpt: warning: {warning}")
        note = None
        if self.config.monitor and seen.value is not None:
            kept = seen.improved and self.config.keep_best > 0
            note = improvement_line(step, self.config.monitor, seen.previous_best, seen.value, self.config.mode, kept)
        event = "stop" if seen.stop else "step"
        saved = self._save_if(state, step, flat, event, note)
        if seen.stop:
            self.echo(f"expckpt: stopping training at step {step} ({seen.stop}; checkpoint.on_divergence: stop)")
        return Decision(saved=saved, stop=seen.stop)

    step_completed = save  # expckpt 0.1's name

    def _check_metrics(self, flat: Mapping[str, float]) -> None:
        if self._metrics_checked or not flat:
            return
        self._metrics_checked = True
        self.config.check_metrics(flat.keys())
        if self.config.divergence_metric not in flat:
            self.echo(f"expckpt: divergence detection is off: this run logs no metric named"
                      f" {self.config.divergence_metric!r} (set checkpoint.divergence_metric to one it logs)")

    def _save_if(self, state: TrainingState, step: int, flat: dict[str, float], event: str, note: str | None) -> bool:
        ctx = SaveContext(step=step, now=time.time(), last_saved=self._last_saved, event=event)
        if not self._save_policy.should_save(ctx):
            self._unsaved = (step, flat)
            if note:
                self.echo(note)
            return False
        if event != "step":
            self.wait()  # the final and the stop save are never skipped as busy
        state.library["watch"] = self.watch.state_dict()
        self._guard_file()
        payload = state.capture()
        live_files = self.wiring.committer.read_live_files() if self.wiring.committer else {}
        job = (step, flat, live_files, note)
        with self.stop.critical():
            if self.config.async_save:
                if self._writer is None:
                    self._writer = AsyncWriter(self._write_job, when_busy=self.config.when_busy, echo=self.echo)
                with self._inflight_lock:
                    self._inflight += 1
                if not self._writer.submit(payload, lambda snapshot: (snapshot, *job)):
                    with self._inflight_lock:
                        self._inflight -= 1
                    self._unsaved = (step, flat)  # when_busy: skip; a later step (or the final one) is saved
                    if note:
                        self.echo(note)
                    return False
            else:
                self._write_job((payload, *job))
        self._unsaved = None
        self._last_saved = CheckpointInfo(step=step, metrics=flat, time=ctx.now)
        return True

    def _write_job(self, job: tuple[Any, int, Mapping[str, float], dict[str, bytes], str | None]) -> None:
        try:
            self._publish(job)
        finally:
            if self.config.async_save:
                with self._inflight_lock:
                    self._inflight -= 1

    def _publish(self, job: tuple[Any, int, Mapping[str, float], dict[str, bytes], str | None]) -> None:
        payload, step, metrics, live_files, note = job
        w = self.wiring
        written = write_temp(payload, w.path)
        try:
            if w.committer is None:
                written.publish()
                SessionNote.forget_reset(w.workspace, w.rel_path)
            else:
                record = w.committer.publish(written, step=step, metrics=metrics, live_files=live_files, parent=self.parent)
        except BaseException:
            written.discard()
            raise
        if w.committer is None:
            self._file_stat = _stat(w.path)
        else:  # the stat the committer noted right after the rename, not whatever is there now
            noted = SessionNote.read(w.workspace, w.rel_path)
            self._file_stat = (noted.size, noted.mtime_ns, noted.inode) if noted else _stat(w.path)
        if note:
            self.echo(note)
        if w.committer is None:
            return
        self.parent, self.last_record = record.commit, record
        self.echo(f"Checkpoint experiment '{record.name}' ({record.commit[:7]})")
        if self._retention is not None:
            self._retention.add(record)
        if self._pusher is not None:  # after retention: a checkpoint it dropped is not pushed
            self._pusher.submit(record)

    def _guard_file(self) -> None:
        """Stop if something else wrote the checkpoint file since expckpt last did (checked
        when no background checkpoint is in flight: that one is about to replace the file)."""
        if self._file_stat is None or self._inflight or _stat(self.wiring.path) == self._file_stat:
            return
        if _stat(self.wiring.path) == self._file_stat:
            return
        last = f" since {self.last_record.name}" if self.last_record else ""
        raise CheckpointError(
            f"{self.wiring.rel_path} was changed by something other than expckpt{last} (your own"
            f" torch.save(..., {self.wiring.rel_path!r})? a `dvc exp apply` during the run?); expckpt writes"
            " that file itself: save anything else to another path, then run again")

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, state: TrainingState) -> None:
        """End of training: save the last completed step if the policy skipped it, and wait."""
        if self._unsaved is not None and state.step >= 0:
            step, flat = self._unsaved
            if self.config.every == 0:
                self._guard_file()
                written = write_temp(state.capture(), self.wiring.path)
                written.publish()
                self._file_stat = _stat(self.wiring.path)
            else:
                self._save_if(state, step, flat, "final", None)
        self.wait()
        self._put_back_last()

    def _put_back_last(self) -> None:
        """``dvc exp run`` commits the workspace when training ends: make sure it holds the last
        checkpoint's file and dvc.lock, even if something replaced them during the run."""
        c, record = self.wiring.committer, self.last_record
        if c is None or record is None or self._file_stat is None or _stat(self.wiring.path) == self._file_stat:
            return
        out = record.outs.get(self.wiring.rel_path)
        if out is None or not c.cache.has(out.md5):
            return
        c.cache.checkout(out.md5, self.wiring.path)
        c.restore_lock(record)
        self.echo(f"expckpt: warning: {self.wiring.rel_path} was changed during the run; put back {record.name}'s")

    def wait(self) -> None:
        """Wait until every background checkpoint is published (re-raises a failure)."""
        if self._writer is not None:
            self._writer.drain()

    drain = wait  # expckpt 0.1's name

    def close(self, state: TrainingState | None = None) -> None:
        """Finish (when given the state), then stop the background writer."""
        try:
            if state is not None:
                self.finish(state)
            else:
                self.wait()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if state is None:  # training failed: still leave the last checkpoint in the workspace
                self._put_back_last()
            if self._pusher is not None:  # bounded wait; never fails the run
                self._pusher.close()

    def describe_last(self) -> str:
        if self.last_record is not None:
            return f"last complete checkpoint: {self.last_record.name} ({self.last_record.commit[:7]})"
        if self.wiring.committer is None and self.wiring.path.exists():
            return f"last checkpoint: {self.wiring.rel_path}"
        return "no checkpoint was completed"


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino
