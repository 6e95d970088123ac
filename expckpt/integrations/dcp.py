"""Sharded state (FSDP, or any ``torch.distributed.checkpoint`` state) as a directory checkpoint.

    dist.init_process_group("gloo")                 # or nccl; torchrun sets RANK and WORLD_SIZE
    checkpointer = ShardedCheckpointer.from_env("ckpt/", params.get("checkpoint"))
    state = {"app": AppState(model, optimizer)}     # what dcp.save/dcp.load take (Stateful values)
    start = checkpointer.restore(state) + 1         # every rank: the same step (-1: fresh start)
    for step in range(start, steps):
        ...                                         # train; metrics agreed by all ranks
        if checkpointer.save(state, step, metrics): # collective: every rank, the same step
            break
    checkpointer.close()

The checkpoint is the stage's directory output ``ckpt/`` (``{checkpoint: true, persist: true}``):
DCP's per-rank ``*.distcp`` files and ``.metadata``, which DVC caches as a directory (``.dir``
manifest). The core is not changed; the ranks are coordinated around it:

- save: the ranks agree on the step; rank 0 logs it (dvclive) and asks the save policy and the
  training watch; every rank calls ``dcp.save`` into a fresh staging directory beside the output
  (``.expckpt-tmp-ckpt.<pid>.dcp``: same filesystem, a temp by name). ``dcp.save`` returns once
  every rank's file and the ``.metadata`` are written, so rank 0 then publishes a complete
  directory: the core's ``Committer`` caches every file, renames them into ``ckpt/``, commits,
  moves the ref. A kill between two renames leaves a mix no manifest lists, which the next run
  rolls back to the last complete checkpoint from the cache (``expckpt.resume``); it also deletes
  the staging directory of a dead run. Rank 0's result (published, stop, error) reaches all ranks.
- the step and each rank's RNG states are in the DCP state itself (``expckpt/step``,
  ``expckpt/rng/<rank>``, uint8 tensors), not in a side file; rank 0 adds the watch's state.
- restore: rank 0 applies the resume rules to ``ckpt/`` and puts dvclive's files back; then every
  rank calls ``dcp.load`` on it. DCP reshards, so another world size loads it too (a rank with no saved
  RNG keeps its own). Non-tensor values load with ``torch.load(weights_only=True)``.

Every rank must see the workspace (each writes its own file); rank 0 the ``.dvc/cache``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.planner import ReadItem

from expckpt.atomic import TEMP_MARK, WrittenFile
from expckpt.config import CheckpointConfig
from expckpt.integrations.ranks import broadcast as _broadcast, gather as _gather, together as _together
from expckpt.dirout import WrittenDir
from expckpt.errors import ConfigError, ExpCkptError
from expckpt.policy import CheckpointInfo
from expckpt.saving import SaveContext
from expckpt.records import CheckpointRecord
from expckpt.livefiles import restore_live_files
from expckpt.gclock import pid_alive
from expckpt.resume import ResumePoint, find_resume_point, remove_stale_temps
from expckpt.retention import RunRetention
from expckpt.rng import capture_rng, restore_rng
from expckpt.session import SessionNote
from expckpt.watch import TrainingWatch, flatten_metrics
from expckpt.wiring import Wiring, wire

__all__ = ["STEP_KEY", "SafeLoadPlanner", "ShardedCheckpointer", "rng_key"]

STEP_KEY = "expckpt/step"
WATCH_KEY = "expckpt/watch"


def rng_key(rank: int) -> str:
    return f"expckpt/rng/{rank}"


def _pack(value: Any) -> torch.Tensor:
    """A value as a uint8 tensor, so DCP stores it as a tensor (each rank its own key)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _unpack(tensor: torch.Tensor) -> Any:
    return torch.load(io.BytesIO(tensor.numpy().tobytes()), weights_only=True)


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, but non-tensor values are loaded with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def _staging_prefix(path: Path) -> str:
    return f"{TEMP_MARK}{path.name}."


def remove_stale_staging(path: Path) -> None:
    """Delete staging directories ``<TEMP_MARK><name>.<pid>.dcp`` whose process is gone."""
    prefix = _staging_prefix(path)
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            pid = entry.name[len(prefix):].split(".", 1)[0]
            if entry.name.startswith(prefix) and entry.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


class ShardedCheckpointer:
    """Every rank's checkpointer of a directory output that ``torch.distributed.checkpoint`` writes."""

    def __init__(
        self, wiring: Wiring | None, config: CheckpointConfig, path: Path, *, rank: int, world_size: int,
        group: Any = None, log: bool = True, live_dir: str = "dvclive", echo: Callable[[str], None] = print,
    ) -> None:
        self.wiring = wiring  # rank 0's; None on the others
        self.config = config
        self.path = path
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.live_dir = live_dir
        self.echo = echo if rank == 0 else (lambda line: None)
        self.live: Any = None
        self._log = log and rank == 0
        self.watch = TrainingWatch(
            monitor=config.monitor, mode=config.mode, divergence_metric=config.divergence_metric,
            divergence_steps=config.divergence_steps, patience=config.patience,
            stop_on_problem=config.on_divergence == "stop")
        self._policy = config.save_policy(start=time.time())
        self._last_saved: CheckpointInfo | None = None
        self.parent: str | None = None
        self.last_record: CheckpointRecord | None = None
        c = wiring.committer if wiring is not None else None
        if config.async_save:
            self.echo("expckpt: checkpoint.async is not used with torch.distributed.checkpoint: every rank saves, then rank 0 publishes")
        self._retention = RunRetention(config.keep_policy(), c.store, self.echo, free=wiring.free) if c and wiring else None

    @classmethod
    def from_env(
        cls, path: str | os.PathLike[str] = "ckpt/", config: CheckpointConfig | Mapping[str, Any] | None = None,
        *, live_dir: str = "dvclive", group: Any = None, log: bool = True,
    ) -> ShardedCheckpointer:
        """Collective. ``path`` is the stage's directory checkpoint output; ``log``: dvclive on rank 0."""
        if not isinstance(config, CheckpointConfig):
            config = CheckpointConfig.from_params(config)
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but torch.distributed is not initialised; call"
                " torch.distributed.init_process_group() before ShardedCheckpointer.from_env()", key="WORLD_SIZE")
        rank, world = (dist.get_rank(group), dist.get_world_size(group)) if distributed else (0, 1)

        def make() -> Wiring:
            wiring = wire(path, live_dir=live_dir)
            if not wiring.outputs[0].is_dir:
                raise ConfigError(
                    f"{wiring.rel_path} is not a directory output; torch.distributed.checkpoint writes a directory:"
                    f" declare it as `- {wiring.rel_path}/: {{checkpoint: true, persist: true}}` in dvc.yaml and pass"
                    f" {wiring.rel_path + '/'!r}", key="path", value=wiring.rel_path)
            return wiring

        wiring = _together(make, rank, world, group)
        where = _broadcast(str(wiring.path) if wiring else None, group) if world > 1 else str(wiring.path)
        assert where is not None  # every rank raised if rank 0 had no wiring
        return cls(wiring, config, Path(where), rank=rank, world_size=world, group=group, log=log, live_dir=live_dir)

    # -- resume ------------------------------------------------------------------------------------
    def restore(self, state_dict: dict[str, Any]) -> int:
        """Collective: load the checkpoint to resume from into ``state_dict`` (in place, as
        ``dcp.load`` does); return its step, -1 on a fresh start."""
        found = _together(self._resume_point, self.rank, self.world_size, self.group)
        found = _broadcast(found, self.group) if self.world_size > 1 else found
        step = -1
        if found is not None:
            step = _together(lambda: self._load(state_dict), self.rank, self.world_size, self.group, everyone=True)
            steps = _gather(step, self.group) if self.world_size > 1 else [step]
            if len(set(steps)) != 1:
                raise ExpCkptError(f"ranks restored different steps {steps} from {self.path}; is it on a filesystem every rank sees?")
            origin = f" ({found})" if found else ""
            self.echo(f"Resuming from {self.path.name}{origin}: {step + 1} steps done")
        self._last_saved = CheckpointInfo(step=step, metrics={}, time=time.time())
        if self._log:
            from dvclive import Live

            self.live = Live(dir=self.live_dir, dvcyaml=None, save_dvc_exp=False, resume=step >= 0, report=None)
            if step >= 0:
                self.live.step = step + 1
        return step

    def _resume_point(self) -> str | None:
        """Rank 0: clean up, apply the resume rules; None: fresh start, else the record's name or ''."""
        w = self.wiring
        assert w is not None
        remove_stale_temps(w.path)
        remove_stale_staging(w.path)
        if SessionNote.was_reset(w.workspace, w.rel_path) and w.path.exists():
            self.echo(f"expckpt: starting from scratch (expckpt reset); ignoring {w.rel_path} as DVC checked it out")
            return None
        point = ResumePoint(None, rolled_back=False)
        if w.committer is not None and w.path.exists():
            c = w.committer
            point = find_resume_point(w.path, w.rel_path, w.workspace, c.store, c.cache, self.echo)
        if not (w.path / ".metadata").is_file():
            return None
        if point.record is not None:
            assert w.committer is not None
            self.parent, self.last_record = point.record.commit, point.record
            restore_live_files(w.committer.store, point.record.commit, w.workspace, w.live_dir)
        return point.record.name if point.record is not None else ""

    def _load(self, state_dict: dict[str, Any]) -> int:
        saved = FileSystemReader(self.path).read_metadata().state_dict_metadata
        ours: dict[str, Any] = {STEP_KEY: torch.zeros((), dtype=torch.int64)}
        for key in (rng_key(self.rank), WATCH_KEY if self.rank == 0 else None):
            if key in saved:
                ours[key] = torch.empty(saved[key].size, dtype=torch.uint8)  # type: ignore[union-attr]
        clash = set(ours) & set(state_dict)
        if clash:
            raise ConfigError(f"state_dict key {sorted(clash)[0]!r} is expckpt's own; rename it", key="state_dict")
        dcp.load({**state_dict, **ours}, checkpoint_id=self.path, planner=SafeLoadPlanner())
        if rng_key(self.rank) in ours:
            restore_rng(_unpack(ours[rng_key(self.rank)]))
        if WATCH_KEY in ours:
            self.watch.load_state_dict(_unpack(ours[WATCH_KEY]))
        return int(ours[STEP_KEY])

    # -- save --------------------------------------------------------------------------------------
    def save(self, state_dict: dict[str, Any], step: int, metrics: Mapping[str, float]) -> bool:
        """Collective: step ``step`` completed with ``metrics``; returns True when training should stop."""
        steps = _gather(step, self.group) if self.world_size > 1 else [step]
        if len(set(steps)) != 1:
            raise ConfigError(f"ranks completed different steps {steps}; call save() on every rank with the same step")
        flat = flatten_metrics(metrics)
        decided = _together(lambda: self._decide(step, flat), self.rank, self.world_size, self.group)
        save, stop = _broadcast(decided, self.group) if self.world_size > 1 else decided
        if save:
            staging = self.path.parent / f"{_staging_prefix(self.path)}{os.getpid()}.dcp"
            staging = Path(_broadcast(str(staging), self.group)) if self.world_size > 1 else staging
            ours = {STEP_KEY: torch.tensor(step, dtype=torch.int64), rng_key(self.rank): _pack(capture_rng())}
            if self.rank == 0:
                ours[WATCH_KEY] = _pack(self.watch.state_dict())
            _together(lambda: dcp.save({**state_dict, **ours}, checkpoint_id=staging), self.rank, self.world_size,
                      self.group, everyone=True)  # every rank's file and .metadata are written
            _together(lambda: self._publish(staging, step, flat), self.rank, self.world_size, self.group)
        if stop:
            self.echo(f"expckpt: stopping training at step {step} ({stop}; checkpoint.on_divergence: stop)")
        return bool(stop)

    step_completed = save

    def _decide(self, step: int, flat: dict[str, float]) -> tuple[bool, str | None]:
        """Rank 0: log the step with dvclive, then whether to save it and whether to stop."""
        if self.live is not None:
            self.live.step = step
            for name, value in flat.items():
                self.live.log_metric(name, value)
            self.live.next_step()
        seen = self.watch.observe(step, flat)
        for warning in seen.warnings:
            self.echo(f"expckpt: warning: {warning}")
        ctx = SaveContext(step=step, now=time.time(), last_saved=self._last_saved, event="stop" if seen.stop else "step")
        save = self._policy.should_save(ctx)
        if save:
            self._last_saved = CheckpointInfo(step=step, metrics=flat, time=ctx.now)
        return save, seen.stop

    def _publish(self, staging: Path, step: int, flat: dict[str, float]) -> None:
        """Rank 0: the complete staging directory becomes ``ckpt/`` (and ``<exp>@<step>``)."""
        w = self.wiring
        assert w is not None
        try:
            done = WrittenDir.from_complete(staging)
            moves = {rel: WrittenFile(tmp=staging / rel, dest=w.path / rel, md5=md5, size=size)
                     for rel, (md5, size) in done.entries.items()}
            item = WrittenDir.from_files(w.path, done.entries, moves)
            w.path.mkdir(parents=True, exist_ok=True)
            if w.committer is None:
                item.publish()
                SessionNote.forget_reset(w.workspace, w.rel_path)
                return
            live_files = w.committer.read_live_files()
            record = w.committer.publish(item, step=step, metrics=flat, live_files=live_files, parent=self.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.parent, self.last_record = record.commit, record
        self.echo(f"Checkpoint experiment '{record.name}' ({record.commit[:7]})")
        if self._retention is not None:
            self._retention.add(record)

    def close(self) -> None:
        """End dvclive on rank 0 (no collective: another rank may be gone)."""
        if self.live is not None:
            self.live.end()
            self.live = None

    def __repr__(self) -> str:
        return f"ShardedCheckpointer(rank={self.rank}, world_size={self.world_size}, path={self.path})"
