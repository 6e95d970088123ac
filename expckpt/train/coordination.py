"""Who takes part in a checkpoint: one process, or every rank of a ``torch.distributed`` job.

The core (``expckpt.train.checkpointer``) asks its coordinator, never ``torch.distributed`` itself:

- ``on_main(action)``: rank 0 runs ``action``; its result reaches every rank, and a failure on
  rank 0 is raised on every rank, so no rank waits forever for one that gave up;
- ``everyone(action)``: every rank runs ``action`` and gets its own result; a failure anywhere
  is raised everywhere;
- ``same_step(step)``: all ranks completed the same step, or a ``ConfigError`` on each;
- ``gather(value)``: every rank's value, on every rank.

``Solo`` is the single process (each call is a plain call); ``Ranks`` is a process group. Every
collective of expckpt lives here (as torch DCP keeps its own in ``_DistWrapper``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from expckpt.errors import ConfigError, ExpCkptError

__all__ = ["Coordinator", "Ranks", "Solo", "coordinator_from_env"]

T = TypeVar("T")


class Solo:
    """One process: rank 0 of 1."""

    rank = 0
    world_size = 1
    is_main = True

    def on_main(self, action: Callable[[], T]) -> T:
        return action()

    def everyone(self, action: Callable[[], T]) -> T:
        return action()

    def same_step(self, step: int, what: str = "completed") -> None:
        return None

    def gather(self, value: T) -> list[T]:
        return [value]

    def __repr__(self) -> str:
        return "Solo()"


class Ranks:
    """Every rank of a ``torch.distributed`` process group; rank 0 publishes."""

    def __init__(self, rank: int, world_size: int, group: Any = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.is_main = rank == 0

    def _broadcast(self, value: T) -> T:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value: T) -> list[T]:
        import torch.distributed as dist

        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, value, group=self.group)
        return found

    def _run(self, action: Callable[[], T], everyone: bool) -> T:
        result: Any = None
        error: BaseException | None = None
        if everyone or self.is_main:
            try:
                result = action()
            except Exception as exc:  # reported to the other ranks, then raised here
                error = exc
        errors = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            raise ExpCkptError(f"rank {failed[0][0]} failed, so rank {self.rank} stops too: {failed[0][1]}")
        return result

    def on_main(self, action: Callable[[], T]) -> T:
        return self._broadcast(self._run(action, everyone=False))

    def everyone(self, action: Callable[[], T]) -> T:
        return self._run(action, everyone=True)

    def same_step(self, step: int, what: str = "completed") -> None:
        steps = self.gather(step)
        if len(set(steps)) != 1:
            raise ConfigError(f"ranks {what} different steps {steps}; call it on every rank with the same step")

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, world_size={self.world_size})"


Coordinator = Solo | Ranks


def coordinator_from_env(group: Any = None) -> Coordinator:
    """``Ranks`` when ``torch.distributed`` is initialised (torchrun), else ``Solo``.

    ``WORLD_SIZE > 1`` without an initialised process group is a mistake: every rank would
    publish on its own. It is refused with the call that fixes it.
    """
    dist = sys.modules.get("torch.distributed")  # never import torch just to find out
    if dist is not None and dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(group), dist.get_world_size(group), group)
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ConfigError(
            f"WORLD_SIZE is {world} but torch.distributed is not initialised; call"
            " torch.distributed.init_process_group() before creating the checkpointer",
            key="WORLD_SIZE",
            value=world,
        )
    return Solo()
