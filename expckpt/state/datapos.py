"""Where training is within an epoch, saved with the state, so a paused run skips the batches seen.

    position = DataPosition()
    state = TrainingState(model=model, optimizer=optimizer, position=position)
    with CheckpointLive.from_env(state, params) as live:
        for epoch in live.steps(params["epochs"]):
            for batch in position.batches(epoch, lambda: torch.randperm(n), batch_size):
                ...                                   # one optimizer step on `batch`
                live.pause_point()                    # SIGTERM/SIGUSR1/`expckpt stop`: save here, exit 75
            live.next_step()

The epoch's order is drawn by ``order()`` once, when the epoch starts (so from the RNG exactly
as an uninterrupted run draws it), and kept in the checkpoint only while the epoch is under way:
a run resumed from a pause reuses it and starts at the first batch not yet trained. At the end
of an epoch the state is the same whether or not the epoch was paused, so the checkpoints that
follow are bitwise the uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["DataPosition"]


class DataPosition:
    """A resumable position in an epoch's order of samples (a stateful object for ``TrainingState``)."""

    def __init__(self) -> None:
        self.epoch = -1
        """The epoch under way or last finished (-1: none yet)."""
        self.done = 0
        """Batches of ``epoch`` already handed out (and trained, at a ``pause_point``)."""
        self.order: torch.Tensor | None = None
        """The epoch's order of sample indices while it is under way; None once it is finished."""

    def batches(self, epoch: int, order: Callable[[], torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        """The index batches of ``epoch`` not trained yet, ``batch_size`` each (the last may be shorter)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if self.epoch != epoch or self.order is None:
            self.epoch, self.done, self.order = epoch, 0, order()
        while self.order is not None and self.done * batch_size < len(self.order):
            start = self.done * batch_size
            self.done += 1  # counted before the batch is trained: a pause point after it sees it done
            yield self.order[start : start + batch_size]
        self.order = None

    @property
    def mid_epoch(self) -> bool:
        return self.order is not None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "done": self.done, "order": self.order}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.done = int(state["done"])
        order = state.get("order")
        self.order = order.clone() if isinstance(order, torch.Tensor) else None
