"""Sharded state (FSDP, or any ``torch.distributed.checkpoint`` state) as a directory checkpoint.

    dist.init_process_group("gloo")                 # or nccl; torchrun sets RANK and WORLD_SIZE
    checkpointer = Checkpointer.from_env("ckpt/", params.get("checkpoint"), handler=DcpHandler)
    state = {"model": ModelState(model), "optimizer": OptimizerState(model, optimizer)}  # Stateful values
    steps = StepLog(checkpointer, state)            # dvclive on rank 0
    steps.restore()                                 # every rank: the same step
    for step in range(steps.start, total):
        ...                                         # train; metrics agreed by all ranks
        if steps.completed(step, metrics).stop:     # collective: every rank, the same step
            break
    steps.finish()

``DcpHandler`` is the core's handler for this format; the core decides, publishes and keeps
retention exactly as for a single file. The checkpoint is the stage's directory output
``ckpt/`` (``{checkpoint: true, persist: true}``): DCP's per-rank ``*.distcp`` files and
``.metadata``, which DVC caches as a directory (``.dir`` manifest).

- write: every rank calls ``dcp.save`` into a fresh staging directory beside the output
  (``.expckpt-tmp-ckpt.<pid>.dcp``: same filesystem, a temp by name, named by rank 0's pid).
  ``dcp.save`` returns once every rank's file and the ``.metadata`` are written, so rank 0 then
  publishes a complete directory: the committer caches every file, renames them into ``ckpt/``,
  commits, moves the ref. A kill between two renames leaves a mix no manifest lists, which the
  next run rolls back to the last complete checkpoint from the cache (``expckpt.train.resume``); a dead
  run's staging directory is deleted then too.
- the step and each rank's RNG states are in the DCP state itself (``expckpt/step``,
  ``expckpt/rng/<rank>``, uint8 tensors), not in a side file; rank 0 adds the watch's state.
- a fresh trial (``checkpoint.init_from``) takes the weights of a DCP directory or file
  checkpoint into the state's ``model`` entry (``expckpt.integrations.dcpinit``); its lineage is
  saved in the DCP state too (``expckpt/initialized_from``, rank 0's).
- load: every rank calls ``dcp.load`` on the directory rank 0 chose. DCP reshards, so another
  world size loads it too (a rank with no saved RNG keeps its own). Non-tensor values load with
  ``torch.load(weights_only=True)``.
- read whole in one process (``expckpt doctor``): ``expckpt.serialize.dcpread``, which also
  holds the key names and the safe planner used here.

Every rank must see the workspace (each writes its own file); rank 0 the ``.dvc/cache``.
Saves are synchronous (``checkpoint.async`` is not used: ``dcp.save`` reads the live state).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from expckpt.serialize.atomic import TEMP_MARK, WrittenFile
from expckpt.train.coordination import Coordinator
from expckpt.serialize.dcpmeta import read_index
from expckpt.serialize.dcpread import STEP_KEY, TRIAL_KEY, WATCH_KEY, SafeLoadPlanner, rng_key, unpack
from expckpt.serialize.dirout import WrittenDir
from expckpt.errors import ConfigError
from expckpt.store.gclock import pid_alive
from expckpt.integrations.dcpinit import init_from_dcp
from expckpt.train.handlers import Loaded
from expckpt.train.initfrom import LINEAGE_KEY, started_line
from expckpt.train.initsource import InitSource
from expckpt.train.resume import remove_stale_temps
from expckpt.state.rng import capture_rng, restore_rng
from expckpt.train.wiring import Wiring

__all__ = ["STEP_KEY", "DcpHandler", "SafeLoadPlanner", "rng_key"]


def _pack(value: Any) -> torch.Tensor:
    """A value as a uint8 tensor, so DCP stores it as a tensor (each rank its own key)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _staging_prefix(path: Path) -> str:
    return f"{TEMP_MARK}{path.name}."


def remove_stale_staging(path: Path) -> None:
    """Delete staging directories ``<TEMP_MARK><name>.<pid>.dcp`` whose process is gone."""
    prefix = _staging_prefix(path)
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            pid = entry.name[len(prefix) :].split(".", 1)[0]
            if entry.name.startswith(prefix) and entry.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


class DcpHandler:
    """The core's handler for state that every rank saves with ``torch.distributed.checkpoint``."""

    collective = True
    supports_async = False

    def __init__(self, wiring: Wiring, coord: Coordinator) -> None:
        out = wiring.outputs[0]
        if not out.is_dir:
            raise ConfigError(
                f"{out.rel_path} is not a directory output; torch.distributed.checkpoint writes a directory:"
                f" declare it as `- {out.rel_path}/: {{checkpoint: true, persist: true}}` in dvc.yaml and pass"
                f" {out.rel_path + '/'!r}",
                key="path",
                value=out.rel_path,
            )
        self.path = out.path
        self.coord = coord
        self._staging: Path | None = None
        self._step = -1
        self._lineage: object = None
        """A fresh trial's source (``InitSource.identity``), saved with every checkpoint of it."""

    def set_step(self, state: Any, step: int) -> None:
        self._step = step  # it is saved in the DCP state itself (STEP_KEY)

    def step_of(self, state: Any) -> int:
        return self._step

    def clean(self) -> None:
        remove_stale_temps(self.path)
        remove_stale_staging(self.path)

    def present(self) -> bool:
        return (self.path / ".metadata").is_file()

    def load(self, state: dict[str, Any], *, defer_rng: bool, echo: Callable[[str], None]) -> Loaded:
        saved = read_index(self.path).state_dict_metadata
        rank = self.coord.rank
        ours: dict[str, Any] = {STEP_KEY: torch.zeros((), dtype=torch.int64)}
        for key in (rng_key(rank), *((WATCH_KEY, TRIAL_KEY) if self.coord.is_main else ())):
            if key in saved:
                ours[key] = torch.empty(saved[key].size, dtype=torch.uint8)  # type: ignore[union-attr]
        clash = set(ours) & set(state)
        if clash:
            raise ConfigError(f"state_dict key {sorted(clash)[0]!r} is expckpt's own; rename it", key="state_dict")
        dcp.load({**state, **ours}, checkpoint_id=self.path, planner=SafeLoadPlanner())
        if rng_key(rank) in ours:
            restore_rng(unpack(ours[rng_key(rank)]))
        self._step = int(ours[STEP_KEY])
        library = {"watch": unpack(ours[WATCH_KEY])} if WATCH_KEY in ours else {}
        if TRIAL_KEY in ours:
            self._lineage = library[LINEAGE_KEY] = unpack(ours[TRIAL_KEY])
        return Loaded(step=self._step, library=library)

    def init_from(
        self,
        state: dict[str, Any],
        source: InitSource,
        *,
        restore: tuple[str, ...],
        strict: bool,
        echo: Callable[[str], None],
    ) -> None:
        """Every rank: the source's weights into the state's ``model`` entry (``dcpinit``)."""
        staging = self.path.parent / f"{_staging_prefix(self.path)}{os.getpid()}.init.dcp"
        init_from_dcp(state, source, staging=staging, coord=self.coord, restore=restore, strict=strict, echo=echo)
        self._lineage = source.identity
        echo(started_line(source, restore))

    def lineage(self) -> object:
        """Rank 0: the fresh trial the workspace's checkpoint belongs to, if any."""
        try:
            saved = read_index(self.path).state_dict_metadata
            if TRIAL_KEY not in saved:
                return None
            ours = {TRIAL_KEY: torch.empty(saved[TRIAL_KEY].size, dtype=torch.uint8)}  # type: ignore[union-attr]
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.simplefilter("ignore", UserWarning)
                dcp.load(ours, checkpoint_id=self.path, planner=SafeLoadPlanner(), no_dist=True)
            return unpack(ours[TRIAL_KEY])
        except (OSError, RuntimeError, ValueError):
            return None

    def capture(self, state: dict[str, Any], step: int, watch: Mapping[str, Any] | None) -> dict[str, Any]:
        """What ``dcp.save`` gets: the user's state (read at write time) and expckpt's keys. The step
        saved is the last completed one: a pause saves mid-step (``step`` is the one under way)."""
        ours = {STEP_KEY: torch.tensor(self._step, dtype=torch.int64), rng_key(self.coord.rank): _pack(capture_rng())}
        if watch is not None:
            ours[WATCH_KEY] = _pack(dict(watch))
            if self._lineage is not None:
                ours[TRIAL_KEY] = _pack(self._lineage)
        clash = set(ours) & set(state)
        if clash:
            raise ConfigError(f"state_dict key {sorted(clash)[0]!r} is expckpt's own; rename it", key="state_dict")
        return {**state, **ours}

    def write(self, payload: dict[str, Any]) -> list[Any]:
        """Every rank: its shard into the staging directory; rank 0 gets the complete directory."""
        name = self.coord.on_main(lambda: f"{_staging_prefix(self.path)}{os.getpid()}.dcp")
        self._staging = staging = self.path.parent / name
        try:
            dcp.save(payload, checkpoint_id=staging)
            if not self.coord.is_main:
                return []
            done = WrittenDir.from_complete(staging)
            moves = {
                rel: WrittenFile(tmp=staging / rel, dest=self.path / rel, md5=md5, size=size)
                for rel, (md5, size) in done.entries.items()
            }
            self.path.mkdir(parents=True, exist_ok=True)
            return [WrittenDir.from_files(self.path, done.entries, moves)]
        except BaseException:
            self.done()
            raise

    def published(self, items: list[Any]) -> None:
        return None

    def done(self) -> None:
        """Rank 0, after publishing (or failing to): the staging directory goes."""
        if self._staging is not None and self.coord.is_main:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __repr__(self) -> str:
        return f"DcpHandler({self.path})"
