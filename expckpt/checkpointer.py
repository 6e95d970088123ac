"""The training-side engine: restore where training stopped, checkpoint each completed step.

``Checkpointer.from_env()`` finds out where it runs. Inside ``dvc exp run`` every checkpoint
becomes an experiment ref ``<exp>@<step>`` (see ``committer``); outside, the checkpoint file is
still written atomically and resumed from, so ``python train.py`` works the same way.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from expckpt.cache import DvcCache
from expckpt.checkpoint_file import check_architecture, load_checkpoint, write_temp
from expckpt.committer import Committer
from expckpt.config import CheckpointConfig
from expckpt.errors import ProjectError
from expckpt.gitstore import GitStore
from expckpt.policy import CheckpointInfo
from expckpt.project import Project, RunContext
from expckpt.records import CheckpointRecord
from expckpt.report import analyse, improvement_line
from expckpt.resume import ResumePoint, Resumed, find_resume_point, remove_stale_temps, restore_live_files
from expckpt.session import SessionNote
from expckpt.signals import GracefulStop
from expckpt.state import TrainingState
from expckpt.writer import AsyncWriter

__all__ = ["Checkpointer", "Resumed", "StopTraining"]


class StopTraining(Exception):
    """Raised by ``next_step`` to end training cleanly (divergence or plateau, if configured)."""


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
    """Saves and restores one checkpoint file, and publishes each save as a checkpoint experiment."""

    def __init__(
        self,
        *,
        path: Path,
        rel_path: str,
        config: CheckpointConfig,
        workspace: Path,
        committer: Committer | None = None,
        live_dir: str = "dvclive",
        echo: Callable[[str], None] = print,
    ) -> None:
        self.path = path
        self.rel_path = rel_path
        self.config = config
        self.workspace = workspace
        self.committer = committer
        self.live_dir = live_dir
        self.echo = echo
        self.parent: str | None = None
        self.last_record: CheckpointRecord | None = None
        self._chain: list[CheckpointRecord] = []
        self._last_saved: CheckpointInfo | None = None
        self._last_step_saved = True
        self._metrics_checked = False
        self._warned: set[str] = set()
        self._writer: AsyncWriter | None = None
        self.stop = GracefulStop(self.describe_last, settle=self.drain)
        self._save_policy = config.save_policy(start=time.time())
        self._keep_policy = config.keep_policy()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_env(
        cls,
        path: str | os.PathLike[str] = "model.pt",
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        live_dir: str = "dvclive",
        env: Mapping[str, str] | None = None,
    ) -> Checkpointer:
        """Set up for this process: inside ``dvc exp run`` checkpoints become experiments."""
        if not isinstance(config, CheckpointConfig):
            config = CheckpointConfig.from_params(config)
        run = RunContext.from_env(env)
        rel = Path(path).as_posix()
        if run is None:
            return cls(path=Path(path).resolve(), rel_path=rel, config=config, workspace=Path.cwd(), live_dir=live_dir)
        project = Project.discover(env=env)
        project.checkpoint_output(rel, run.stage)
        store = GitStore.open(project.root)
        if not store.has_commit(run.baseline):
            raise ProjectError(f"baseline {run.baseline} of this run is not in {project.root}", path=project.root)
        cache = DvcCache.for_project(project.root, store.git_dir)
        live_paths = [live_dir, *(p for p in project.tracked_live_paths() if not p.startswith(live_dir))]
        committer = Committer(
            project=project, run=run, store=store, cache=cache, checkpoint_path=rel, live_paths=live_paths
        )
        return cls(
            path=project.workspace / rel,
            rel_path=rel,
            config=config,
            workspace=project.workspace,
            committer=committer,
            live_dir=live_dir,
        )

    @property
    def run(self) -> RunContext | None:
        return self.committer.run if self.committer else None

    # -- resume ------------------------------------------------------------------------------
    def restore(self, state: TrainingState) -> Resumed | None:
        """Load the checkpoint file into ``state`` if there is one; ``None`` means a fresh start.

        Inside ``dvc exp run``, a file left by a checkpoint that did not finish (crash between
        writing it and moving its ref) is replaced by the last complete checkpoint, and the
        dvclive history is put back to match the checkpoint's step. After ``expckpt reset`` the
        file is ignored (``dvc exp run`` checks it out of dvc.lock again) until a new checkpoint.
        Temp files that killed runs left beside the checkpoint file are removed first.
        """
        remove_stale_temps(self.path)
        if not self.path.exists():
            return None
        if SessionNote.was_reset(self.workspace, self.rel_path):
            self.echo(f"expckpt: starting from scratch (expckpt reset); ignoring {self.rel_path} as DVC checked it out")
            return None
        point = ResumePoint(None, rolled_back=False)
        if self.committer is not None:
            point = find_resume_point(
                self.path, self.rel_path, self.workspace, self.committer.store, self.committer.cache, self.echo
            )
        if not self.path.exists():  # an unfinished first checkpoint, dropped
            return None
        payload = load_checkpoint(self.path)
        check_architecture(state.model, payload.get("model"), self.path)
        for key, (saved, now) in state.restore(payload).items():
            self.echo(f"expckpt: optimizer {key} is {now!r} now ({saved!r} in the checkpoint); training goes on with {now!r}")
        if point.record is not None:
            assert self.committer is not None
            self.parent = point.record.commit
            self.last_record = point.record
            restore_live_files(self.committer.store, point.record.commit, self.workspace, self.live_dir)
        self._last_saved = CheckpointInfo(step=state.step, metrics={}, time=time.time())
        return Resumed(step=state.step, record=point.record, rolled_back=point.rolled_back)

    # -- training hooks ----------------------------------------------------------------------
    def step_completed(self, state: TrainingState, step: int, metrics: Mapping[str, Any]) -> None:
        """Called once per completed step (after dvclive has written its files)."""
        flat = _flatten(metrics)
        if not self._metrics_checked and flat:
            self.config.check_metrics(flat.keys())
            self._metrics_checked = True
        state.step = step
        history = state.extras.setdefault("_expckpt_history", [])
        history.append([step, flat])
        line = self._update_best(state, step, flat)
        now = time.time()
        save = self._save_policy.should_save(step, now, self._last_saved)
        saved = save and self._save(state, step, flat, note=line)
        if line and not saved:
            self.echo(line)
        self._last_step_saved = saved
        self._watch(state, step)

    def _update_best(self, state: TrainingState, step: int, metrics: Mapping[str, float]) -> str | None:
        monitor = self.config.monitor
        if not monitor or monitor not in metrics:
            return None
        value = metrics[monitor]
        best = state.best["value"] if state.best else None
        better = math.isfinite(value) and (
            best is None or (value > best if self.config.mode == "max" else value < best)
        )
        previous = best if best is not None else (-math.inf if self.config.mode == "max" else math.inf)
        if better:
            state.best = {"metric": monitor, "value": value, "step": step}
        return improvement_line(
            step, monitor, previous, value, self.config.mode, kept=better and self.config.keep_best > 0
        )

    def _save(self, state: TrainingState, step: int, metrics: Mapping[str, float], note: str | None = None) -> bool:
        """Save (or queue) the checkpoint of ``step``; False when ``when_busy: skip`` skipped it."""
        payload = state.capture()
        live_files = self.committer.read_live_files() if self.committer else {}
        job = (step, metrics, live_files, note)
        if self.config.async_save:
            if self._writer is None:
                self._writer = AsyncWriter(self._write_job, when_busy=self.config.when_busy, echo=self.echo)
            with self.stop.critical():
                if not self._writer.submit(payload, lambda snapshot: (snapshot, *job)):
                    return False
        else:
            with self.stop.critical():
                self._write_job((payload, *job))
        self._last_saved = CheckpointInfo(step=step, metrics=metrics, time=time.time())
        return True

    def _write_job(self, job: tuple[Any, int, Mapping[str, float], dict[str, bytes], str | None]) -> None:
        payload, step, metrics, live_files, note = job
        written = write_temp(payload, self.path)
        try:
            if self.committer is None:
                written.publish()
                SessionNote.forget_reset(self.workspace, self.rel_path)
                if note:
                    self.echo(note)
                return
            record = self.committer.publish(
                written, step=step, metrics=metrics, live_files=live_files, parent=self.parent
            )
        except BaseException:
            written.discard()
            raise
        self.parent = record.commit
        self.last_record = record
        self._chain.append(record)
        if note:
            self.echo(note)
        self.echo(f"Checkpoint experiment '{record.name}' ({record.commit[:7]})")
        self._apply_retention()

    def _apply_retention(self) -> None:
        assert self.committer is not None
        infos = [CheckpointInfo(step=r.step, metrics=r.metrics, time=r.time) for r in self._chain]
        reasons = self._keep_policy.reasons(infos)
        kept = []
        for record, why in zip(self._chain, reasons):
            if why:
                kept.append(record)
            else:
                self.committer.store.delete_ref(record.ref.ref, record.commit)
        self._chain = kept

    def _watch(self, state: TrainingState, step: int) -> None:
        cfg = self.config
        report = analyse(
            state.extras.get("_expckpt_history", []),
            monitor=cfg.monitor,
            mode=cfg.mode,
            divergence_metric=cfg.divergence_metric,
            divergence_steps=cfg.divergence_steps,
            patience=cfg.patience,
        )
        problems = []
        if report.diverging:
            problems.append("diverging")
        if report.plateau:
            problems.append("plateau")
        for problem in problems:
            if problem not in self._warned:
                self._warned.add(problem)
                self.echo(f"expckpt: warning: step {step}: " + "; ".join(report.lines()))
        if problems and cfg.on_divergence == "stop":
            if not self._last_step_saved:
                self.drain()  # a final save is never skipped as busy
                self._save(state, step, dict(state.extras["_expckpt_history"][-1][1]))
                self._last_step_saved = True
            self.echo(f"expckpt: stopping training at step {step} ({', '.join(problems)}; checkpoint.on_divergence: stop)")
            raise StopTraining(", ".join(problems))

    def finish(self, state: TrainingState, metrics: Mapping[str, Any] | None = None) -> None:
        """End of training: make sure the last completed step is saved, and wait for writes."""
        if not self._last_step_saved and state.step >= 0:
            history = state.extras.get("_expckpt_history") or [[state.step, {}]]
            if self.config.every == 0:
                written = write_temp(state.capture(), self.path)
                written.publish()
            else:
                self.drain()  # a final save is never skipped as busy
                self._save(state, state.step, dict(history[-1][1]))
            self._last_step_saved = True
        self.drain()

    def drain(self) -> None:
        if self._writer is not None:
            self._writer.drain()

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.drain()
            finally:
                self._writer.close()
                self._writer = None

    def describe_last(self) -> str:
        if self.last_record is not None:
            return f"last complete checkpoint: {self.last_record.name} ({self.last_record.commit[:7]})"
        if self.committer is None and self.path.exists():
            return f"last checkpoint: {self.rel_path}"
        return "no checkpoint was completed"
