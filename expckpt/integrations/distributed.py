"""torchrun / DDP: every rank takes part in each checkpoint, only rank 0 writes and publishes it.

    dist.init_process_group("gloo")            # or nccl; torchrun sets RANK and WORLD_SIZE
    checkpointer = DistributedCheckpointer.from_env("model.pt", params.get("checkpoint"))
    state = TrainingState(model=ddp_model.module, optimizer=optimizer)
    steps = StepLog(checkpointer, state, log=checkpointer.rank == 0)   # dvclive on rank 0 only
    steps.restore()                            # every rank: the same checkpoint
    for epoch in range(state.step + 1, epochs):
        ...                                    # train, then metrics agreed by all ranks
        if steps.completed(epoch, metrics):    # collective: all ranks call it with the same step
            break
    steps.finish()

Rank 0 holds a real ``Checkpointer`` (inside ``dvc exp run`` it publishes ``<exp>@<step>`` and
puts the file in the DVC cache); the other ranks hold one that only reads. The core is not
changed, the ranks are coordinated around it:

- restore: rank 0 restores first (it may roll an unfinished file back to the last complete
  checkpoint and put dvclive's files back); then every other rank loads that same file, and all
  check that they stand at the same step.
- save: the ranks first agree on the step (all-gather; a mismatch is an error on every rank),
  then each rank's RNG states are gathered so that rank 0 saves all of them (``extras``), rank 0
  saves, and its result (done, stop, or its error) is broadcast: no rank runs ahead of a
  checkpoint, none hangs when rank 0 fails.
- a killed rank: torchrun then ends the others; what rank 0 had published is complete (the core
  publishes atomically: file, cache object, commit, ref last), what it had not is not there.

Multi-node: rank 0 must see the workspace and the repository's ``.dvc/cache`` (it is the only
writer); other nodes need the checkpoint file at the same path to restore, so the workspace
must be on a filesystem shared by the nodes (or copied there from a DVC remote before a run).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from expckpt.integrations.ranks import together
from expckpt.checkpointer import Checkpointer
from expckpt.config import CheckpointConfig
from expckpt.errors import ConfigError, ExpCkptError
from expckpt.integrations.loop import save_step
from expckpt.rng import capture_rng, restore_rng
from expckpt.state import TrainingState

__all__ = ["DistributedCheckpointer", "StepDecision"]

T = TypeVar("T")
RANK_RNG = "_expckpt_rank_rng"


def _pack(value: Any) -> bytes:
    """Tensors do not travel in ``all_gather_object`` here; their serialised bytes do."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


@dataclass(frozen=True)
class StepDecision:
    """What became of a step on every rank: ``stop`` is rank 0's (divergence or plateau stop)."""

    step: int
    stop: bool


class DistributedCheckpointer:
    """A ``Checkpointer`` for all ranks of a process group; rank 0's does the writing."""

    def __init__(
        self, checkpointer: Checkpointer, *, rank: int, world_size: int, group: Any = None, path: Any = None, live_dir: str = "dvclive"
    ) -> None:
        self.checkpointer = checkpointer
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.live_dir = live_dir
        self.path = Path(path if path is not None else getattr(checkpointer, "path", "model.pt"))

    @classmethod
    def from_env(
        cls,
        path: str | os.PathLike[str] = "model.pt",
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        live_dir: str = "dvclive",
        group: Any = None,
    ) -> DistributedCheckpointer:
        """Rank 0: ``Checkpointer.from_env`` as usual; other ranks: one that never publishes."""
        if not (dist.is_available() and dist.is_initialized()):
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ConfigError(
                    f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but torch.distributed is not initialised; "
                    "call torch.distributed.init_process_group() before DistributedCheckpointer.from_env()",
                    key="WORLD_SIZE",
                    value=os.environ["WORLD_SIZE"],
                )
            return cls(Checkpointer.from_env(path, config, live_dir=live_dir), rank=0, world_size=1, path=path, live_dir=live_dir)
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        env: dict[str, str] | None = None if rank == 0 else {}  # {}: not inside `dvc exp run`, so it only reads files
        make = lambda: Checkpointer.from_env(path, config, live_dir=live_dir, env=env)  # noqa: E731
        checkpointer = together(make, rank, world, group, everyone=True)
        if rank != 0:
            checkpointer.echo = lambda line: None  # rank 0 says it
        return cls(checkpointer, rank=rank, world_size=world, group=group, path=path, live_dir=live_dir)

    # -- collectives ---------------------------------------------------------------------------
    def _agreed(self, action: Callable[[], T], *, everyone: bool = False) -> T:
        return together(action, self.rank, self.world_size, self.group, everyone=everyone)

    def _broadcast(self, value: T) -> T:
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    # -- the Checkpointer interface --------------------------------------------------------------
    def restore(self, state: TrainingState) -> Any:
        """Every rank resumes from the checkpoint rank 0 resumes from (``None``: fresh start)."""
        getattr(state, "extras", None)  # a TrainingState restores only the objects it holds: make it hold extras
        resumed = self._agreed(lambda: self.checkpointer.restore(state))  # rank 0 first, alone
        then = (lambda: self.checkpointer.restore(state)) if self.rank else (lambda: resumed)
        resumed = self._agreed(then, everyone=True)  # then the others, from the file it left
        steps: list[Any] = [None] * self.world_size
        dist.all_gather_object(steps, state.step, group=self.group)
        if len(set(steps)) != 1:
            raise ExpCkptError(f"ranks restored different steps {steps} from {self.path}; is the workspace shared by all ranks?")
        ranks_rng = (getattr(state, "extras", None) or {}).get(RANK_RNG)
        if ranks_rng and self.rank < len(ranks_rng):
            restore_rng(ranks_rng[self.rank])
        return resumed

    def save(self, state: TrainingState, step: int, metrics: Mapping[str, float]) -> StepDecision:
        """Collective: every rank calls it for the same step; rank 0 saves and publishes."""
        steps: list[Any] = [None] * self.world_size
        dist.all_gather_object(steps, step, group=self.group)
        if len(set(steps)) != 1:
            raise ConfigError(f"ranks completed different steps {steps}; call save() on every rank with the same step")
        packed: list[Any] = [None] * self.world_size
        dist.all_gather_object(packed, _pack(capture_rng()), group=self.group)
        extras = getattr(state, "extras", None)
        if extras is not None and self.rank == 0:
            extras[RANK_RNG] = [_unpack(p) for p in packed]
        stop = self._agreed(lambda: save_step(self.checkpointer, state, step, metrics))
        state.step = step
        return StepDecision(step=step, stop=bool(self._broadcast(stop)))

    step_completed = save

    def finish(self, state: TrainingState) -> None:
        """Rank 0 saves the last step if its policy skipped it; all wait until it is written."""
        self._agreed(lambda: self.checkpointer.finish(state))

    def close(self) -> None:
        """Rank 0 waits for writes under way (no collective: another rank may be gone)."""
        self.checkpointer.close()

    @property
    def last_record(self) -> Any:
        return getattr(self.checkpointer, "last_record", None)

    def __repr__(self) -> str:
        return f"DistributedCheckpointer(rank={self.rank}, world_size={self.world_size}, path={self.path})"
