"""The core every front end adapts to: restore where training stopped, save each completed step.

    checkpointer = Checkpointer.from_env(config=params.get("checkpoint"))
    resumed = checkpointer.restore(state)             # a Resumed, or None on a fresh start
    for step in range(state.step + 1, total):
        ...
        if checkpointer.save(state, step, metrics).stop:
            break
    checkpointer.close(state)                         # final save if skipped, then wait

It owns every decision and the publish, whatever the front end (plain loop, ``CheckpointLive``,
torchrun DDP, sharded DCP, Lightning, the HF ``Trainer``): the save policy says when (the final
and the stop save are policies too), the training watch says how training goes, the committer
publishes (inside ``dvc exp run`` every checkpoint becomes an experiment ref ``<exp>@<step>``),
retention drops what the keep policy no longer keeps, the pusher shares it. Two parts differ by
front end and are handed in: a *handler* turns the state into files and back
(``expckpt.train.handlers``: ``torch.save`` files by default, DCP shards in ``integrations.dcp``), and
a *coordinator* says who takes part (``expckpt.train.coordination``: one process, or every rank with
rank 0 deciding and publishing). Outside ``dvc exp run`` the files are still written atomically
and resumed from, so ``python train.py`` works the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expckpt.policy.config import CheckpointConfig
from expckpt.train.coordination import Coordinator, coordinator_from_env
from expckpt.store.exprwlock import hold_workspace
from expckpt.train.handlers import FileHandler, Handler
from expckpt.store.headstate import detached_head_note
from expckpt.train.initfrom import LINEAGE_KEY, holds_trial
from expckpt.train.initsource import source_for
from expckpt.store.livefiles import restore_live_files
from expckpt.train.orphan import OrphanWatch
from expckpt.store.outside import dropped_outside_line
from expckpt.train.pause import PauseRequest, TrainingPaused
from expckpt.policy.policy import CheckpointInfo
from expckpt.store.records import CheckpointRecord, InitializedFrom, lineage_of
from expckpt.publish.remote import PushTarget, resolve_target
from expckpt.publish.remotename import check_remote_name
from expckpt.ops.reset import applied_over_reset
from expckpt.policy.report import improvement_line
from expckpt.train.resume import ResumePoint, Resumed, find_resume_point, refuse_lost_checkpoint
from expckpt.publish.retention import interrupted_run
from expckpt.policy.saving import SaveContext
from expckpt.state.seeding import unseeded_note
from expckpt.store.session import SessionNote
from expckpt.train.signals import GracefulStop
from expckpt.policy.stopafter import REASON as DOCTOR_STOP, stop_after_step, stop_reason
from expckpt.policy.watch import TrainingWatch, divergence_metric_for, divergence_off_line, flatten_metrics
from expckpt.train.wiring import Wiring, wire
from expckpt.train.publisher import Job, Publisher

__all__ = ["Checkpointer", "Decision", "Resumed", "StopTraining"]

HandlerFactory = Callable[[Wiring, Coordinator], Handler]
"""Makes the handler of a run from its wiring and coordinator (``FileHandler`` by default)."""


class StopTraining(Exception):
    """Raised by ``CheckpointLive.next_step`` outside ``live.steps()`` to end training cleanly."""


@dataclass(frozen=True)
class Decision:
    """What ``Checkpointer.save`` did with a completed step (the same on every rank)."""

    saved: bool
    stop: str | None = None
    """Why training should stop now (``on_divergence: stop``), or None to go on."""


@dataclass(frozen=True)
class _Plan:
    """Rank 0's verdict on a completed step, shared with every rank."""

    save: bool
    event: str = "step"
    note: str | None = None
    stop: str | None = None
    paused: str | None = None
    """Why the run pauses here (a signal's name, ``expckpt stop``): saved, published as paused."""


class Checkpointer:
    """Saves and restores a run's checkpoint outputs; publishes each save as a checkpoint experiment."""

    def __init__(
        self,
        wiring: Wiring,
        config: CheckpointConfig,
        *,
        echo: Callable[[str], None] = print,
        push: PushTarget | None = None,
        coordinator: Coordinator | None = None,
        handler: HandlerFactory = FileHandler,
    ) -> None:
        self.wiring = wiring
        self.config = config
        self.coord: Coordinator = coordinator or coordinator_from_env()
        self.echo = echo if self.coord.is_main else (lambda line: None)
        self.handler = handler(wiring, self.coord)
        self.watch = TrainingWatch(
            monitor=config.monitor,
            mode=config.mode,
            divergence_metric=config.divergence_metric,
            divergence_steps=config.divergence_steps,
            patience=config.patience,
            stop_on_problem=config.on_divergence == "stop",
        )
        c = wiring.committer
        self.pause = PauseRequest(
            config.pause_signals,
            config.pause_deadline,
            c.project.root if c else wiring.workspace,
            c.run.exp_name if c else None,
            self.describe_last,
        )
        self.stop = GracefulStop(self.describe_last, settle=self.wait, pause=self.pause)
        self._paused: str | None = None
        self.resumed: Resumed | None = None
        self._point: ResumePoint | None = None
        self._save_policy = config.save_policy(start=time.time())
        self._last_saved: CheckpointInfo | None = None
        self._unsaved: tuple[int, dict[str, float]] | None = None
        self._metrics_checked = False
        self._seeds_checked = False
        self._pub = Publisher(wiring, config, self.handler, lambda line: self.echo(line), push)  # echo may be rebound
        self._async = config.async_save and self.handler.supports_async
        if config.async_save and not self._async:
            self.echo(
                f"expckpt: checkpoint.async is not used with {type(self.handler).__name__}: every rank saves,"
                " then rank 0 publishes"
            )
        self._orphan = OrphanWatch(c.project.workspace if c else None, c.run.exp_name if c else None)
        self._held: Callable[[], None] | None = None
        """Lets DVC's experiment lock on the workspace go; held from ``restore`` to ``close`` (``exprwlock``)."""
        self.stop_after: int | None = None
        """Stop after this step as a preemption would (``EXPCKPT_STOP_AFTER_STEP``, set by ``expckpt doctor``)."""

    @classmethod
    def from_env(
        cls,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        live_dir: str = "dvclive",
        env: Mapping[str, str] | None = None,
        handler: HandlerFactory = FileHandler,
        group: Any = None,
    ) -> Checkpointer:
        """Set up for this process (collective under torchrun: call it on every rank).

        ``path`` defaults to the stage's ``checkpoint: true`` output; a list of paths publishes
        them together (``ckpt/``, ending in ``/``: a directory output). Under ``torch.distributed``
        rank 0 finds the project and publishes; the other ranks only read and write files.
        """
        if not isinstance(config, CheckpointConfig):
            config = CheckpointConfig.from_params(config)
        coord = coordinator_from_env(group)
        main = coord.is_main

        def make() -> Checkpointer:
            wiring = wire(path, live_dir=live_dir, env=env if main else {})
            c = wiring.committer  # checkpoint.push / DVC_EXP_AUTO_PUSH: checked before training starts
            push, warning = resolve_target(c.store, c.project.root, config.push, env) if c else (None, None)
            checkpointer = cls(wiring, config, push=push, coordinator=coord, handler=handler)
            checkpointer.stop_after = stop_after_step(env)
            if warning:
                checkpointer.echo(warning)
            if c is not None and c.project.workspace == c.project.root:  # a workspace run, not --temp/--queue
                detached = detached_head_note(c.store.git_dir, c.run.baseline, c.store.branch_and_tag_tips())
                if detached:
                    checkpointer.echo(detached)
            return checkpointer

        made: list[Checkpointer] = []
        coord.on_main(lambda: made.append(make()))  # rank 0 first: a bad project fails on every rank
        if not main:
            made.append(make())
        return made[0]

    @property
    def last_record(self) -> CheckpointRecord | None:
        """The newest checkpoint this run published (or resumed from)."""
        return self._pub.last_record

    @property
    def initialized_from(self) -> InitializedFrom | None:
        """The checkpoint this fresh trial started from (``checkpoint.init_from``); in every record."""
        return self._pub.initialized_from

    @property
    def path(self) -> Path:
        return self.wiring.path

    @property
    def rel_path(self) -> str:
        return self.wiring.rel_path

    @property
    def live_dir(self) -> str:
        return self.wiring.live_dir

    # -- resume ----------------------------------------------------------------------------------
    def restore(self, state: Any, *, defer_rng: bool = False) -> Resumed | None:
        """Load the checkpoint output(s) into ``state`` if there are any; ``None`` means a fresh start.

        Collective under torchrun: rank 0 applies the resume rules (``expckpt.train.resume``), then
        every rank loads the checkpoint it chose. With ``defer_rng`` the RNG states wait for
        ``state.apply_rng()`` (``CheckpointLive`` calls it at the first step). Inside
        ``dvc exp run``, a run whose next steps are already checkpoints of another run with the
        same experiment name is refused here, before any training. From here until ``close``,
        Ctrl+C and SIGTERM finish the checkpoint in progress, then stop (``expckpt.train.signals``).
        """
        self.stop.install()
        self.coord.on_main(self._hold_workspace)
        try:
            self.coord.on_main(self.pause.clear_mark)
            if self.config.init_from:
                self._start_trial(state, defer_rng)
            else:
                self._resume(state, defer_rng)
            step = self.resumed.step if self.resumed else -1
            self.coord.on_main(lambda: self._check_start(state, step))
        except BaseException:
            self._let_go()
            raise
        return self.resumed

    def _hold_workspace(self) -> None:
        """Rank 0, inside ``dvc exp run``: a second ``dvc exp run`` in this workspace is refused at once."""
        c = self.wiring.committer
        if c is not None and self._held is None:
            self._held = hold_workspace(c.project, c.run.exp_name)

    def _let_go(self) -> None:
        if self._held is not None:
            self._held()
            self._held = None

    def _check_start(self, state: Any, step: int) -> None:
        """Rank 0, inside ``dvc exp run``: say what is dropped, refuse a name another run holds."""
        w, c = self.wiring, self.wiring.committer
        if c is None:
            return
        resumed = self.resumed
        over = resumed.record.name if resumed is not None and resumed.record is not None else None
        dropped = dropped_outside_line(w.workspace, w.rel_path, w.path, step, over)
        if dropped:
            self.echo(dropped)
        c.check_name(step + 1)
        if self._pub.pusher is not None:  # and the remote's, before any training (issue 21)
            unchecked = check_remote_name(c.store, self._pub.pusher.target.git_remote, c.run.baseline, c.run.exp_name)
            if unchecked:
                self.echo(unchecked)

    def _resume(self, state: Any, defer_rng: bool) -> None:
        """Every rank loads the checkpoint rank 0's resume rules chose, if any."""
        if self.coord.on_main(self._find_resume_point):
            loaded = self.coord.everyone(lambda: self.handler.load(state, defer_rng=defer_rng, echo=self.echo))
            self.coord.same_step(loaded.step, "restored")
            self.watch.load_state_dict(loaded.library.get("watch") or {})
            self._pub.initialized_from = self.initialized_from or lineage_of(loaded.library.get(LINEAGE_KEY))
            self._last_saved = CheckpointInfo(step=loaded.step, metrics={}, time=time.time())
            point = self._point or ResumePoint(None, rolled_back=False)  # rank 0's; the others' say nothing
            self.resumed = Resumed(step=loaded.step, record=point.record, rolled_back=point.rolled_back)
            self.coord.on_main(self._resumed)

    def _start_trial(self, state: Any, defer_rng: bool) -> None:
        """``init_from`` (``expckpt.train.initfrom``): resume this trial's own chain if the workspace
        holds it, else start it from the source's weights (missing or damaged: refused here)."""
        source = self.coord.on_main(lambda: source_for(self.wiring, str(self.config.init_from)))
        self._pub.initialized_from = source.lineage
        if self.coord.on_main(lambda: holds_trial(self.wiring, source, self.handler.lineage)):
            self._resume(state, defer_rng)
            if self.resumed is not None:
                return
        self.coord.on_main(self.handler.clean)
        self.handler.init_from(
            state, source, restore=self.config.init_restore, strict=self.config.init_strict, echo=self.echo
        )

    def _find_resume_point(self) -> bool:
        """Rank 0: clean up, refuse a lost checkpoint, apply the resume rules (False: fresh start)."""
        w = self.wiring
        self.handler.clean()
        if w.committer is not None:  # a lost checkpoint (any output's) is not a fresh start
            for out in w.outputs:
                refuse_lost_checkpoint(out.path, out.rel_path, w.workspace, w.committer.store, w.committer.cache)
        if not self.handler.present():
            return False
        if SessionNote.was_reset(w.workspace, w.rel_path):
            paths = {o.rel_path: o.path for o in w.outputs}
            won = applied_over_reset(w.workspace, paths, w.committer.store) if w.committer else None
            self.echo(
                won or f"expckpt: starting from scratch (expckpt reset); ignoring {w.rel_path} as DVC checked it out"
            )
            if won is None:
                return False
        if w.committer is not None:
            c = w.committer
            paths = {o.rel_path: o.path for o in w.outputs}
            self._point = find_resume_point(paths, w.rel_path, w.workspace, c.store, c.cache, self.echo)
        return self.handler.present()

    def _resumed(self) -> None:
        """Rank 0, after every rank loaded: lineage, dvclive's history, what the workspace holds."""
        w, resumed = self.wiring, self.resumed
        assert resumed is not None
        if resumed.record is not None and w.committer is not None:
            self._pub.parent, self._pub.last_record = resumed.record.commit, resumed.record
            if self._pub.retention is not None:  # continuing a killed run: its retention covers that run's checkpoints
                self._pub.retention.adopt(interrupted_run(w.committer.store, resumed.record, self.config))
            restore_live_files(w.committer.store, resumed.record.commit, w.workspace, w.live_dir)
        self._pub.guard.note_now()
        origin = f" ({resumed.record.name})" if resumed.record else ""
        names = ", ".join(o.rel_path for o in w.outputs if o.path.exists())
        self.echo(f"Resuming from {names}{origin}: {resumed.step + 1} steps done")

    # -- training hooks --------------------------------------------------------------------------
    def save(self, state: Any, step: int, metrics: Mapping[str, Any]) -> Decision:
        """Step ``step`` completed with ``metrics``: save it if the save policy says so.

        Collective under torchrun: every rank calls it for the same step; rank 0 decides.
        """
        self.coord.same_step(step)
        self.handler.set_step(state, step)
        flat = flatten_metrics(metrics)
        plan = self.coord.on_main(lambda: self._plan(step, flat))
        saved = plan.save and self._save(state, step, flat, plan)
        if (paused := plan.paused) is not None:
            self._paused = paused  # every rank: close exits 75 on all of them
            self.coord.on_main(lambda: self._paused_at(step, paused))
        elif plan.stop == "orphaned":
            self.coord.on_main(lambda: self._orphan.say(self.echo, step))
        elif plan.stop and plan.stop != DOCTOR_STOP:
            self.echo(f"expckpt: stopping training at step {step} ({plan.stop}; checkpoint.on_divergence: stop)")
        return Decision(saved=saved, stop=plan.stop)

    def _plan(self, step: int, flat: dict[str, float]) -> _Plan:
        """Rank 0: watch the step, then ask the save policy."""
        self._check_metrics(flat)
        if not self._seeds_checked:  # once, at the first save of a fresh start (issue 22)
            self._seeds_checked = True
            seeds = unseeded_note() if self.resumed is None else None
            if seeds:
                self.echo(seeds)
        seen = self.watch.observe(step, flat)
        for warning in seen.warnings:
            self.echo(f"expckpt: warning: {warning}")
        note = None
        if self.config.monitor and seen.value is not None:
            kept = seen.improved and self.config.keep_best > 0
            note = improvement_line(step, self.config.monitor, seen.previous_best, seen.value, self.config.mode, kept)
        paused = self.pause.requested  # SIGTERM/SIGUSR1/`expckpt stop` (expckpt.train.pause)
        if paused:
            return _Plan(save=True, event="stop", stop=f"paused ({paused})", paused=paused)
        if self._orphan.gone():  # `dvc exp run` was killed: save this step, say so, stop (expckpt.train.orphan)
            return _Plan(save=True, event="stop", note=note, stop="orphaned")
        stop = seen.stop or stop_reason(step, self.stop_after)
        return self._ask_policy(step, flat, "stop" if stop else "step", note, stop)

    def _ask_policy(self, step: int, flat: dict[str, float], event: str, note: str | None, stop: str | None) -> _Plan:
        ctx = SaveContext(step=step, now=time.time(), last_saved=self._last_saved, event=event)
        if self._save_policy.should_save(ctx):
            return _Plan(save=True, event=event, note=note, stop=stop)
        self._unsaved = (step, flat)
        if note:
            self.echo(note)
        return _Plan(save=False, stop=stop)

    # -- pause at a batch boundary (expckpt.train.pause) ----------------------------------------------
    @property
    def pause_requested(self) -> str | None:
        """Why this process was asked to pause (a signal's name, ``expckpt stop``), or None."""
        return self.pause.requested

    def pause_wanted(self) -> str | None:
        """Collective under torchrun: rank 0's ``pause_requested``, the same on every rank."""
        return self.coord.on_main(lambda: self.pause.requested)

    def pause_point(self, state: Any) -> bool:
        """Between batches (collective under torchrun): if a pause was requested, save ``state``
        as it is now (its step is still the last completed one; a ``DataPosition`` in it says how
        far the next one got) and return True; leave the loop then: ``close`` exits with 75."""
        paused = self.pause_wanted()
        if paused is None:
            return False
        step = self.handler.step_of(state) + 1
        plan = _Plan(save=True, event="stop", stop=f"paused ({paused})", paused=paused)
        self._save(state, step, {}, plan)
        self._paused = paused
        self.coord.on_main(lambda: self._paused_at(step, paused))
        return True

    def _paused_at(self, step: int, why: str) -> None:
        """Rank 0, once the paused checkpoint is published: mark it, say how to go on."""
        self.wait()
        self.pause.done()
        name = self.last_record.name if self.last_record is not None else self.wiring.rel_path
        self.pause.mark(name)
        self.echo(
            f"expckpt: paused by {why} at step {step} ({name}); exiting with status 75;"
            " continue with `dvc exp apply <checkpoint> && dvc exp run`"
        )

    def _check_metrics(self, flat: Mapping[str, float]) -> None:
        if self._metrics_checked or not flat:
            return
        self._metrics_checked = True
        self.config.check_metrics(flat.keys())
        if divergence_metric_for(self.config.divergence_metric, flat) is None and not self._off_said():
            self.echo(divergence_off_line(self.config.divergence_metric))

    def _off_said(self) -> bool:
        """Whether the run resumed from has said it already (once per experiment, not per resume)."""
        last = self.last_record
        metric = self.config.divergence_metric
        return self.resumed is not None and (last is None or divergence_metric_for(metric, last.metrics) is None)

    def _save(self, state: Any, step: int, flat: dict[str, float], plan: _Plan) -> bool:
        """Capture on every rank, write (rank 0, or every rank for shards), publish on rank 0."""
        if plan.event != "step":
            self.coord.on_main(self.wait)  # the final and the stop save are never skipped as busy
        self.coord.on_main(self._pub.check_workspace)
        payload = self.handler.capture(state, step, self.watch.state_dict() if self.coord.is_main else None)
        job: Job = (step, flat, plan.note, plan.paused is not None)
        with self.stop.critical():
            if self._async:
                saved = self.coord.on_main(lambda: self._pub.submit(payload, job))
            elif self.handler.collective:
                items = self.coord.everyone(lambda: self.handler.write(payload))
                self.coord.on_main(lambda: self._pub.publish(items, *job))
                saved = True
            else:
                self.coord.on_main(lambda: self._pub.publish(self.handler.write(payload), *job))
                saved = True
        if self.coord.is_main:
            if saved:
                self._unsaved = None
                self._last_saved = CheckpointInfo(step=step, metrics=flat, time=time.time())
            else:  # when_busy: skip; a later step (or the final one) is saved
                self._unsaved = (step, flat)
                if plan.note:
                    self.echo(plan.note)
        return saved

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, state: Any) -> None:
        """End of training (collective): save the last completed step if the policy skipped it, and wait.

        With ``every: 0`` the last step is written to the outputs without a checkpoint
        experiment: DVC's own commit at the end of ``dvc exp run`` takes it. A framework that
        ends training on SIGTERM itself (Lightning) lands here with the pause still pending: the
        state it stopped at is saved as paused, and ``close`` exits 75, never as a finished run.
        """
        if self._paused is None and self.pause_point(state):
            return
        unsaved = self.coord.on_main(lambda: self._unsaved)
        if unsaved is not None:
            step, flat = unsaved
            if self.config.every == 0:
                self._write_unpublished(state, step)
            else:
                plan = self.coord.on_main(lambda: self._ask_policy(step, flat, "final", None, None))
                if plan.save:
                    self._save(state, step, flat, plan)
        self.coord.on_main(self.wait)
        if self.coord.is_main:
            self._pub.guard.put_back(self.last_record, self.echo)

    def _write_unpublished(self, state: Any, step: int) -> None:
        self.coord.on_main(self._pub.check_workspace)
        payload = self.handler.capture(state, step, self.watch.state_dict() if self.coord.is_main else None)
        items = self.coord.everyone(
            lambda: self.handler.write(payload) if self.handler.collective or self.coord.is_main else []
        )
        self.coord.on_main(lambda: self._pub.publish_unnoted(items))

    def wait(self) -> None:
        """Wait until every background checkpoint is published (re-raises a failure)."""
        self._pub.wait()

    def close(self, state: Any = None) -> None:
        """Finish (when given the state), then stop the background writer.

        Without ``state`` (training failed or was stopped) no rank waits for another: a rank
        may be gone. The last complete checkpoint is left in the workspace.
        """
        try:
            if state is not None:
                self.finish(state)
            else:
                self.wait()
        finally:
            self._pub.close(failed=state is None and self.coord.is_main)
            self.stop.uninstall()
            if self.coord.is_main:
                self._let_go()
                self._orphan.forget()
        if self._paused is not None:
            raise TrainingPaused(self._paused)

    def describe_last(self) -> str:
        if self.last_record is not None:
            return f"last complete checkpoint: {self.last_record.name} ({self.last_record.commit[:7]})"
        if self.wiring.committer is None and self.wiring.path.exists():
            return f"last checkpoint: {self.wiring.rel_path}"
        return "no checkpoint was completed"

    def __repr__(self) -> str:
        return f"Checkpointer({self.handler!r}, {self.coord!r})"
