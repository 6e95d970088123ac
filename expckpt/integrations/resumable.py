"""A training loader that Lightning resumes inside an epoch: it skips the batches already trained.

    from expckpt.integrations.lightning import ExpCkptCallback, ResumableLoader

    train_loader = ResumableLoader(train_set, batch_size=64, seed=params["seed"])
    trainer.fit(model, train_loader, val_loader)

Lightning 2 saves a training loader's ``state_dict()`` with its loop state when the loader has
one, and when it resumes inside an epoch it hands that back (``load_state_dict``) and expects the
loader to yield only the batches not trained yet. A plain ``DataLoader`` has no position, so
``ExpCkptCallback`` pauses at the next batch only when every training loader has one (else at the
epoch's end, as before).

The epoch's order depends on ``seed`` and the epoch only (a ``DistributedSampler``'s, each rank its
share under DDP; Lightning calls ``sampler.set_epoch`` as each epoch starts): a resume draws it
again and never touches the global RNG, so the batches after a pause are the uninterrupted run's.
A ``DataPosition`` keeps the epoch and the batches trained; the batches are loaded by a
``DataLoader`` made per epoch (``num_workers``, ``collate_fn``, ... pass through) with its own
generator. Randomness inside worker processes is not part of the position.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from expckpt.state.datapos import DataPosition

__all__ = ["EpochOrder", "ResumableLoader"]

_OURS = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last", "generator")


class EpochOrder:
    """The order of samples of an epoch: ``DistributedSampler(seed, epoch)``, this rank's share."""

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _sampler(self) -> DistributedSampler[int]:
        dist = torch.distributed
        world, rank = (
            (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
        )
        sampler: DistributedSampler[int] = DistributedSampler(
            self.dataset, num_replicas=world, rank=rank, shuffle=self.shuffle, seed=self.seed
        )
        sampler.set_epoch(self.epoch)
        return sampler

    def __iter__(self) -> Iterator[int]:
        return iter(self._sampler())

    def __len__(self) -> int:
        return len(self._sampler())


class ResumableLoader:
    """Batches of ``dataset`` in the epoch's order, with a position Lightning saves and restores."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, **loader_args: Any
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        taken = sorted(set(loader_args) & set(_OURS))
        if taken:
            raise TypeError(f"ResumableLoader sets {', '.join(taken)} itself; give batch_size, shuffle and seed")
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = EpochOrder(dataset, shuffle=shuffle, seed=seed)
        """Lightning calls ``sampler.set_epoch(epoch)`` as each epoch starts."""
        self.position = DataPosition()
        self.loader_args = loader_args
        self._seed = seed
        self._trained = 0
        """Batches of the epoch under way handed to training (workers may have loaded more)."""

    def __len__(self) -> int:
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Any]:
        return self._epoch()

    def _epoch(self) -> Iterator[Any]:
        # runs at the first batch, after Lightning's set_epoch and load_state_dict
        epoch = self.sampler.epoch
        batches = self.position.sampled(epoch, self.sampler, self.batch_size)  # the ones not trained yet
        self._trained = self.position.done
        indices = (batch.tolist() for batch in batches)
        quiet = torch.Generator().manual_seed(self._seed + epoch)  # the global RNG is left alone
        for batch in DataLoader(self.dataset, batch_sampler=indices, generator=quiet, **self.loader_args):
            self._trained += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position: epoch, batches trained (not those workers loaded ahead), batch size."""
        state = self.position.state_dict()
        state.update(done=self._trained, mid_epoch=self.position.epoch >= 0 and self._trained < len(self))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.load_state_dict(state)
        self._trained = self.position.done
