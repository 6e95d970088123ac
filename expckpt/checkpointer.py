"""The training-side engine: restore where training stopped, checkpoint each completed step.

``Checkpointer.from_env()`` finds out where it runs. Inside ``dvc exp run`` every checkpoint
becomes an experiment ref ``<exp>@<step>`` (see ``committer``); outside, the checkpoint file is
still written atomically and resumed from, so ``python train.py`` works the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expckpt.atomic import TEMP_MARK
from expckpt.cache import DvcCache
from expckpt.checkpoint_file import WrittenFile, check_architecture, load_checkpoint, write_temp
from expckpt.committer import Committer
from expckpt.config import CheckpointConfig
from expckpt.errors import ProjectError
from expckpt.gitstore import GitStore
from expckpt.policy import CheckpointInfo
from expckpt.project import Project, RunContext
from expckpt.records import CheckpointRecord, load_records
from expckpt.report import analyse, improvement_line
from expckpt.session import SessionNote, hash_with_note
from expckpt.signals import GracefulStop
from expckpt.state import TrainingState
from expckpt.writer import AsyncWriter

__all__ = ["Checkpointer", "Resumed", "StopTraining"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopTraining(Exception):
    """Raised by ``next_step`` to end training cleanly (divergence or plateau, if configured)."""


@dataclass(frozen=True)
class Resumed:
    """Where a run resumed from."""

    step: int
    """The last completed step in the checkpoint (training goes on at ``step + 1``)."""
    record: CheckpointRecord | None
    """The checkpoint experiment it matches, if any."""
    rolled_back: bool = False
    """True when an unfinished checkpoint was discarded for the last complete one."""


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            flat[name] = float(value)
    return flat


_HPARAMS_KEY = "optimizer_hparams"


def _optimizer_hparams(optimizer: Any) -> dict[str, Any]:
    """The optimizer's constructor settings (``lr``, ``weight_decay``, ...) that are plain values."""
    plain = (int, float, bool, str, type(None))
    defaults = getattr(optimizer, "defaults", None) or {}
    return {
        k: v
        for k, v in defaults.items()
        if isinstance(v, plain) or (isinstance(v, tuple) and all(isinstance(x, plain) for x in v))
    }


def _capture(state: TrainingState) -> dict[str, Any]:
    """``state.capture()`` plus the optimizer's settings, to notice on resume what changed."""
    payload = state.capture()
    if state.optimizer is not None:
        payload[_HPARAMS_KEY] = _optimizer_hparams(state.optimizer)
    return payload


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
        self._remove_stale_temps()
        if not self.path.exists():
            return None
        if SessionNote.was_reset(self.workspace, self.rel_path):
            self.echo(f"expckpt: starting from scratch (expckpt reset); ignoring {self.rel_path} as DVC checked it out")
            return None
        record, rolled_back = self._match_record() if self.committer else (None, False)
        if not self.path.exists():  # an unfinished first checkpoint, dropped
            return None
        payload = load_checkpoint(self.path)
        check_architecture(state.model, payload.get("model"), self.path)
        chosen = _optimizer_hparams(state.optimizer)
        state.restore(payload)
        self._keep_changed_hparams(state, chosen, payload.get(_HPARAMS_KEY))
        if record is not None:
            self.parent = record.commit
            self.last_record = record
            self._restore_live_files(record.commit)
        self._last_saved = CheckpointInfo(step=state.step, metrics={}, time=time.time())
        return Resumed(step=state.step, record=record, rolled_back=rolled_back)

    def _keep_changed_hparams(self, state: TrainingState, chosen: dict[str, Any], saved: Any) -> None:
        """Keep optimizer settings changed since the checkpoint (``-S lr=...``): loading the
        optimizer's state would otherwise silently put the checkpoint's values back."""
        if state.optimizer is None or not isinstance(saved, Mapping):
            return
        changed = {k: v for k, v in chosen.items() if k in saved and saved[k] != v}
        for group in state.optimizer.param_groups:
            for key, value in changed.items():
                group[key] = value
                if key == "lr" and "initial_lr" in group:
                    group["initial_lr"] = value
        if "lr" in changed and isinstance(getattr(state.scheduler, "base_lrs", None), list):
            state.scheduler.base_lrs = [changed["lr"]] * len(state.scheduler.base_lrs)
        for key, value in changed.items():
            self.echo(f"expckpt: optimizer {key} is {value!r} now ({saved[key]!r} in the checkpoint); training goes on with {value!r}")

    def _remove_stale_temps(self) -> None:
        """Delete ``<TEMP_MARK><name>.<pid>.<thread>`` files of processes that no longer exist.

        A checkpoint killed before its rename leaves a complete temp file as big as the state;
        without this, every crash would leak one. Files of live processes are left alone.
        """
        prefix = f"{TEMP_MARK}{self.path.name}."
        with contextlib.suppress(OSError):
            for tmp in self.path.parent.iterdir():
                pid = tmp.name[len(prefix):].split(".", 1)[0] if tmp.name.startswith(prefix) else ""
                if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    def _match_record(self) -> tuple[CheckpointRecord | None, bool]:
        assert self.committer is not None
        store, cache = self.committer.store, self.committer.cache
        note = SessionNote.read(self.workspace, self.rel_path)
        md5, _ = hash_with_note(self.path, note)
        records = [r for r in load_records(store) if self.rel_path in r.outs]
        matching = [r for r in records if r.outs[self.rel_path].md5 == md5]
        if matching:
            # Byte-identical checkpoints are common (same seed, same steps). The note wins while
            # the file is untouched since this workspace's last checkpoint: DVC keeps
            # EXEC_APPLY until HEAD moves, so it may name an apply that came before that run.
            applied = store.get_ref("refs/exps/exec/EXEC_APPLY")
            noted = note.commit if note else None
            st = os.stat(self.path)
            untouched = note is not None and (note.size, note.mtime_ns, note.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
            matching.sort(key=lambda r: (untouched and r.commit == noted, r.commit == applied, r.commit == noted, r.time))
            return matching[-1], False
        if md5 not in cache.written_objects():
            # Not a file expckpt wrote (the user's own, or damaged): used as it is, never
            # replaced; a corrupt or foreign one fails loading with a clear error.
            return None, False
        if note is not None:
            last = next((r for r in records if r.commit == note.commit), None)
            if last is not None and cache.has(note.md5):
                cache.checkout(note.md5, self.path)
                self.echo(
                    f"expckpt: {self.rel_path} was written by a checkpoint that did not finish;"
                    f" resuming from the last complete one, {last.name}"
                )
                return last, True
        if note is None and cache.has(md5):
            # The first checkpoint in this workspace was cut short after its file was published
            # (no ref, no note): there is nothing complete to go back to. Its bytes stay in the
            # cache, so removing the file loses nothing.
            self.path.unlink()
            self.echo(
                f"expckpt: {self.rel_path} was written by a checkpoint that did not finish, and"
                " none finished before it; starting from scratch"
            )
            return None, True
        return None, False

    def _restore_live_files(self, commit: str) -> None:
        assert self.committer is not None
        wanted = self.committer.store.list_dir(commit, self.live_dir)
        if not wanted:
            return
        live_root = self.workspace / self.live_dir
        for root, _, names in os.walk(live_root):
            for name in names:
                full = Path(root, name)
                if full.relative_to(self.workspace).as_posix() not in wanted:
                    full.unlink()
        for rel, data in wanted.items():
            target = self.workspace / rel
            if not target.is_file() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

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
        if save:
            self._save(state, step, flat, note=line)
        elif line:
            self.echo(line)
        self._last_step_saved = save
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

    def _save(self, state: TrainingState, step: int, metrics: Mapping[str, float], note: str | None = None) -> None:
        payload = _capture(state)
        live_files = self.committer.read_live_files() if self.committer else {}
        job = (step, metrics, live_files, note)
        if self.config.async_save:
            if self._writer is None:
                self._writer = AsyncWriter(self._write_job)
            with self.stop.critical():
                self._writer.submit(payload, lambda snapshot: (snapshot, *job))
        else:
            with self.stop.critical():
                self._write_job((payload, *job))
        self._last_saved = CheckpointInfo(step=step, metrics=metrics, time=time.time())

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
                self._save(state, step, dict(state.extras["_expckpt_history"][-1][1]))
                self._last_step_saved = True
            self.echo(f"expckpt: stopping training at step {step} ({', '.join(problems)}; checkpoint.on_divergence: stop)")
            raise StopTraining(", ".join(problems))

    def finish(self, state: TrainingState, metrics: Mapping[str, Any] | None = None) -> None:
        """End of training: make sure the last completed step is saved, and wait for writes."""
        if not self._last_step_saved and state.step >= 0:
            history = state.extras.get("_expckpt_history") or [[state.step, {}]]
            if self.config.every == 0:
                written = write_temp(_capture(state), self.path)
                written.publish()
            else:
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

    def note_fatal(self, message: str) -> None:
        print(message, file=sys.stderr)
