"""Collectives the ranks of a torchrun job agree through: rank 0's value to all, every rank's
value to all, and an action run on rank 0 (or all) whose failure on any rank is raised on every
rank, so that none waits forever for a rank that already gave up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from expckpt.errors import ExpCkptError

__all__ = ["broadcast", "gather", "together"]

T = TypeVar("T")


def broadcast(value: T, group: Any) -> T:
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def gather(value: Any, group: Any) -> list[Any]:
    found: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(found, value, group=group)
    return found


def together(action: Callable[[], T], rank: int, world: int, group: Any, *, everyone: bool = False) -> T:
    """Run ``action`` on rank 0 (or every rank); a failure on any rank is raised on all of them."""
    result: Any = None
    error: BaseException | None = None
    if everyone or rank == 0:
        try:
            result = action()
        except Exception as exc:  # reported to the other ranks, then raised here
            error = exc
    if world > 1:
        errors = gather(None if error is None else f"{type(error).__name__}: {error}", group)
    else:
        errors = [None]
    if error is not None:
        raise error
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        raise ExpCkptError(f"rank {failed[0][0]} failed, so rank {rank} stops too: {failed[0][1]}")
    return result
