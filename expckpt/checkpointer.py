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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expckpt.checkpoint_file import check_architecture, load_checkpoint
from expckpt.dirstate import load_dir_checkpoint
from expckpt.exprwlock import hold_workspace
from expckpt.orphan import OrphanWatch
from expckpt.outputs import OutputFiles
from expckpt.config import CheckpointConfig
from expckpt.policy import CheckpointInfo
from expckpt.saving import SaveContext
from expckpt.pusher import Pusher
from expckpt.records import CheckpointRecord
from expckpt.remote import PushTarget, resolve_target
from expckpt.remotename import check_remote_name
from expckpt.report import improvement_line
from expckpt.livefiles import restore_live_files
from expckpt.resume import ResumePoint, Resumed, find_resume_point, remove_stale_temps
from expckpt.resume import refuse_lost_checkpoint
from expckpt.retention import RunRetention
from expckpt.session import SessionNote
from expckpt.signals import GracefulStop
from expckpt.state import TrainingState
from expckpt.stateset import StateFiles, as_state_files
from expckpt.watch import TrainingWatch, flatten_metrics
from expckpt.wiring import Wiring, wire
from expckpt.workspace_guard import WorkspaceGuard
from expckpt.writer import AsyncWriter

__all__ = ["Checkpointer", "Decision", "Resumed", "StopTraining"]

AnyState = TrainingState | StateFiles | Mapping[str, TrainingState]
"""One ``TrainingState``, or ``checkpoint output path -> TrainingState`` for several outputs."""


class StopTraining(Exception):
    """Raised by ``CheckpointLive.next_step`` outside ``live.steps()`` to end training cleanly."""


@dataclass(frozen=True)
class Decision:
    """What ``Checkpointer.save`` did with a completed step."""

    saved: bool
    stop: str | None = None
    """Why training should stop now (``on_divergence: stop``), or None to go on."""


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
        self._guard = WorkspaceGuard(wiring)
        self._outputs = OutputFiles(wiring.outputs)
        """Per-file stats of each directory output as last published (unchanged files are skipped)."""
        self._writer: AsyncWriter | None = None
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._retention = (
            RunRetention(config.keep_policy(), wiring.committer.store, echo, free=wiring.free)
            if wiring.committer is not None else None
        )
        self._pusher = Pusher(push, wiring.committer.project.root, echo) if push and wiring.committer else None
        self._orphan = OrphanWatch(wiring.committer.project.workspace if wiring.committer else None,
                                   wiring.committer.run.exp_name if wiring.committer else None)
        self._held: Callable[[], None] | None = None
        """Lets DVC's experiment lock on the workspace go; held from ``restore`` to ``close`` (``exprwlock``)."""

    @classmethod
    def from_env(
        cls,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        live_dir: str = "dvclive",
        env: Mapping[str, str] | None = None,
    ) -> Checkpointer:
        """Set up for this process. ``path`` defaults to the stage's ``checkpoint: true`` output;
        a list of paths publishes them together (``ckpt/``, ending in ``/``: a directory output)."""
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
    def group(self, state: AnyState) -> StateFiles:
        """``state`` as one TrainingState per checkpoint output."""
        return as_state_files(state, [o.rel_path for o in self.wiring.outputs])

    def restore(self, state: AnyState, *, defer_rng: bool = False) -> Resumed | None:
        """Load the checkpoint output(s) into ``state`` if there are any; ``None`` means a fresh start.

        The rules for which checkpoint that is are in ``expckpt.resume``. With ``defer_rng`` the
        RNG states wait for ``state.apply_rng()`` (``CheckpointLive`` calls it at the first step).
        ``state`` is a ``TrainingState``, or ``output path -> TrainingState`` for several outputs.
        Inside ``dvc exp run``, a run whose next steps are already checkpoints of another run
        with the same experiment name is refused here, before any training.
        """
        c = self.wiring.committer
        if c is not None and self._held is None:  # a 2nd `dvc exp run` in this workspace is refused at once
            self._held = hold_workspace(c.project, c.run.exp_name)
        try:
            resumed = self._restore(state, defer_rng)
            if c is not None:
                c.check_name(self.group(state).step + 1)
            if c is not None and self._pusher is not None:  # and the remote's, before any training (issue 21)
                unchecked = check_remote_name(c.store, self._pusher.target.git_remote, c.run.baseline, c.run.exp_name)
                if unchecked:
                    self.echo(unchecked)
        except BaseException:
            self._let_go()
            raise
        return resumed

    def _let_go(self) -> None:
        if self._held is not None:
            self._held()
            self._held = None

    def _restore(self, state: AnyState, defer_rng: bool) -> Resumed | None:
        w = self.wiring
        group = self.group(state)
        for out in w.outputs:
            remove_stale_temps(out.path)
        if w.committer is not None:  # a lost checkpoint (any output's) is not a fresh start
            for out in w.outputs:
                refuse_lost_checkpoint(out.path, out.rel_path, w.workspace, w.committer.store, w.committer.cache)
        if not w.path.exists():
            return None
        if SessionNote.was_reset(w.workspace, w.rel_path):
            self.echo(f"expckpt: starting from scratch (expckpt reset); ignoring {w.rel_path} as DVC checked it out")
            return None
        point = ResumePoint(None, rolled_back=False)
        if w.committer is not None and w.path.exists():
            c = w.committer
            paths = {o.rel_path: o.path for o in w.outputs}
            point = find_resume_point(paths, w.rel_path, w.workspace, c.store, c.cache, self.echo)
        if not w.path.exists():
            return None
        for out in w.outputs:
            st = group.states.get(out.rel_path)
            if st is None or not out.path.exists():
                continue
            payload = load_dir_checkpoint(out.path) if out.path.is_dir() else load_checkpoint(out.path)
            for name, module in st.modules().items():
                check_architecture(module, payload.get(name), out.path)
            for line in st.restore(payload, defer_rng=True):
                self.echo(line)
        if not defer_rng:
            group.apply_rng()
        self.watch.load_state_dict(group.library.get("watch") or {})
        if point.record is not None:
            assert w.committer is not None
            self.parent = point.record.commit
            self.last_record = point.record
            restore_live_files(w.committer.store, point.record.commit, w.workspace, w.live_dir)
        self._last_saved = CheckpointInfo(step=group.step, metrics={}, time=time.time())
        self._guard.note_now()
        self._outputs.remember_noted(w.workspace)
        self.resumed = Resumed(step=group.step, record=point.record, rolled_back=point.rolled_back)
        origin = f" ({point.record.name})" if point.record else ""
        names = ", ".join(o.rel_path for o in w.outputs if o.path.exists())
        self.echo(f"Resuming from {names}{origin}: {group.step + 1} steps done")
        return self.resumed

    # -- training hooks --------------------------------------------------------------------------
    def save(self, state: AnyState, step: int, metrics: Mapping[str, Any]) -> Decision:
        """Step ``step`` completed with ``metrics``: save it if the save policy says so."""
        state = self.group(state)
        flat = flatten_metrics(metrics)
        self._check_metrics(flat)
        state.step = step
        seen = self.watch.observe(step, flat)
        for warning in seen.warnings:
            self.echo(f"expckpt: warning: {warning}")
        note = None
        if self.config.monitor and seen.value is not None:
            kept = seen.improved and self.config.keep_best > 0
            note = improvement_line(step, self.config.monitor, seen.previous_best, seen.value, self.config.mode, kept)
        orphaned = self._orphan.gone()  # `dvc exp run` was killed: save this step, say so, stop (expckpt.orphan)
        event = "stop" if seen.stop or orphaned else "step"
        saved = self._save_if(state, step, flat, event, note)
        if seen.stop:
            self.echo(f"expckpt: stopping training at step {step} ({seen.stop}; checkpoint.on_divergence: stop)")
        if orphaned:
            self._orphan.say(self.echo, step)
        return Decision(saved=saved, stop=seen.stop or ("orphaned" if orphaned else None))

    step_completed = save  # expckpt 0.1's name

    def _check_metrics(self, flat: Mapping[str, float]) -> None:
        if self._metrics_checked or not flat:
            return
        self._metrics_checked = True
        self.config.check_metrics(flat.keys())
        if self.config.divergence_metric not in flat:
            self.echo(f"expckpt: divergence detection is off: this run logs no metric named"
                      f" {self.config.divergence_metric!r} (set checkpoint.divergence_metric to one it logs)")

    def _save_if(self, state: StateFiles, step: int, flat: dict[str, float], event: str, note: str | None) -> bool:
        ctx = SaveContext(step=step, now=time.time(), last_saved=self._last_saved, event=event)
        if not self._save_policy.should_save(ctx):
            self._unsaved = (step, flat)
            if note:
                self.echo(note)
            return False
        if event != "step":
            self.wait()  # the final and the stop save are never skipped as busy
        state.library["watch"] = self.watch.state_dict()
        self._guard.check(busy=self._inflight > 0, last=self.last_record)
        payload = self._outputs.capture(state)
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
        items = self._outputs.write(payload)
        try:
            if w.committer is None:
                for item in items:
                    item.publish()
                SessionNote.forget_reset(w.workspace, w.rel_path)
            else:
                record = w.committer.publish(items, step=step, metrics=metrics, live_files=live_files, parent=self.parent)
        except BaseException:
            for item in items:
                item.discard()
            raise
        self._outputs.published(items)
        self._guard.note_published()
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

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, state: AnyState) -> None:
        """End of training: save the last completed step if the policy skipped it, and wait."""
        state = self.group(state)
        if self._unsaved is not None and state.step >= 0:
            step, flat = self._unsaved
            if self.config.every == 0:
                self._guard.check(busy=self._inflight > 0, last=self.last_record)
                items = self._outputs.write(self._outputs.capture(state))
                for item in items:
                    item.publish()
                self._outputs.published(items)
                self._guard.note_now()
            else:
                self._save_if(state, step, flat, "final", None)
        self.wait()
        self._guard.put_back(self.last_record, self.echo)

    def wait(self) -> None:
        """Wait until every background checkpoint is published (re-raises a failure)."""
        if self._writer is not None:
            self._writer.drain()

    drain = wait  # expckpt 0.1's name

    def close(self, state: AnyState | None = None) -> None:
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
                self._guard.put_back(self.last_record, self.echo)
            if self._pusher is not None:  # bounded wait; never fails the run
                self._pusher.close()
            self._let_go()
            self._orphan.forget()

    def describe_last(self) -> str:
        if self.last_record is not None:
            return f"last complete checkpoint: {self.last_record.name} ({self.last_record.commit[:7]})"
        if self.wiring.committer is None and self.wiring.path.exists():
            return f"last checkpoint: {self.wiring.rel_path}"
        return "no checkpoint was completed"
