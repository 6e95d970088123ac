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

Under torchrun each rank has its own share of the samples, but a checkpoint holds one rank's
position: ``position.sampled(epoch, sampler, batch_size)`` takes a sampler whose order depends on
its seed and the epoch only (``DistributedSampler``), sets its epoch and does not save the order;
a resume draws it again and skips the batches done, which is the same count on every rank
because ``Checkpointer.pause_point`` is collective.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from expckpt.errors import ConfigError

__all__ = ["DataPosition", "EpochSampler"]


class EpochSampler(Protocol):
    """A sampler whose order is a function of its seed and epoch (``DistributedSampler``)."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[int]: ...


class DataPosition:
    """A resumable position in an epoch's order of samples (a stateful object for ``TrainingState``)."""

    def __init__(self) -> None:
        self.epoch = -1
        """The epoch under way or last finished (-1: none yet)."""
        self.done = 0
        """Batches of ``epoch`` already handed out (and trained, at a ``pause_point``)."""
        self.order: torch.Tensor | None = None
        """The epoch's order of sample indices while it is under way; None once it is finished."""
        self.mid_epoch = False
        """Whether ``epoch`` is under way (paused, when read from a checkpoint)."""
        self.batch_size = 0
        """The batch size ``done`` counts in (0: none yet)."""
        self._saves_order = True

    def batches(self, epoch: int, order: Callable[[], torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        """The index batches of ``epoch`` not trained yet, ``batch_size`` each (the last may be shorter)."""
        return self._batches(epoch, order, batch_size, saves_order=True)

    def sampled(self, epoch: int, sampler: EpochSampler, batch_size: int) -> Iterator[torch.Tensor]:
        """The index batches of ``sampler`` in ``epoch`` not trained yet (``sampler.set_epoch(epoch)``
        first). Its order is drawn again on resume, not saved: it must depend on the epoch only."""
        if not callable(getattr(sampler, "set_epoch", None)):
            raise TypeError(f"{type(sampler).__name__} has no set_epoch(); use batches() with the epoch's order")
        sampler.set_epoch(epoch)
        return self._batches(
            epoch, lambda: torch.tensor(list(sampler), dtype=torch.int64), batch_size, saves_order=False
        )

    def _batches(
        self, epoch: int, order: Callable[[], torch.Tensor], batch_size: int, *, saves_order: bool
    ) -> Iterator[torch.Tensor]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if self.epoch != epoch or not self.mid_epoch:
            self.epoch, self.done, self.order = epoch, 0, order()
        else:
            if self.order is None:  # resumed without a saved order: the same order again
                self.order = order()
            self._check_resume(epoch, batch_size, len(self.order))
        self.mid_epoch, self.batch_size, self._saves_order = True, batch_size, saves_order
        return self._iterate(batch_size)

    def _check_resume(self, epoch: int, batch_size: int, samples: int) -> None:
        """The paused epoch goes on in the batches it was trained in, over the same samples."""
        if self.batch_size and batch_size != self.batch_size:
            raise ConfigError(
                f"the paused epoch {epoch} was trained in batches of {self.batch_size}, this run asks for"
                f" {batch_size}; resume it with batch_size {self.batch_size}",
                key="batch_size",
                value=batch_size,
            )
        if self.done > -(-samples // batch_size):
            raise ConfigError(
                f"the paused epoch {epoch} had {self.done} batches trained, but its order now has only"
                f" {samples} samples ({batch_size} a batch); resume with the data of the paused run",
                key="batch_size",
                value=batch_size,
            )

    def _iterate(self, batch_size: int) -> Iterator[torch.Tensor]:
        while self.order is not None and self.done * batch_size < len(self.order):
            start = self.done * batch_size
            self.done += 1  # counted before the batch is trained: a pause point after it sees it done
            yield self.order[start : start + batch_size]
        self.order, self.mid_epoch = None, False

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "done": self.done,
            "mid_epoch": self.mid_epoch,
            "batch_size": self.batch_size,
        }
        if self.mid_epoch and self._saves_order and self.order is not None:
            state["order"] = self.order
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = state.get("order")
        self.epoch = int(state["epoch"])
        self.done = int(state["done"])
        self.order = order.clone() if isinstance(order, torch.Tensor) else None
        self.mid_epoch = bool(state.get("mid_epoch", self.order is not None))
        self.batch_size = int(state.get("batch_size", 0))
