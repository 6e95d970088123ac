"""``ResumableLoader``: the epoch's order from seed and epoch, a position that round-trips through
``state_dict``, the batches trained skipped on resume, the global RNG left alone."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from expckpt.errors import ConfigError
from expckpt.integrations.resumable import ResumableLoader

DATA = TensorDataset(torch.arange(10))


def batches(loader: ResumableLoader, epoch: int, count: int | None = None) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)  # what Lightning does as each epoch starts
    out = []
    for (batch,) in loader:
        out.append(batch.tolist())
        if len(out) == count:
            break
    return out


def test_a_loader_restored_mid_epoch_yields_the_batches_left_of_the_same_order() -> None:
    whole = batches(ResumableLoader(DATA, 3, seed=1), 2)
    assert len(whole) == 4 == len(ResumableLoader(DATA, 3)) and sorted(i for b in whole for i in b) == list(range(10))
    first = ResumableLoader(DATA, 3, seed=1)
    assert batches(first, 2, count=2) == whole[:2]
    state = first.state_dict()
    assert state == {"epoch": 2, "done": 2, "mid_epoch": True, "batch_size": 3}
    again = ResumableLoader(DATA, 3, seed=1)
    again.load_state_dict(state)
    assert batches(again, 2) == whole[2:]
    assert again.state_dict()["mid_epoch"] is False
    assert batches(again, 3) != whole and batches(again, 3) == batches(ResumableLoader(DATA, 3, seed=1), 3)


def test_the_order_comes_from_seed_and_epoch_not_the_global_rng() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    one = batches(ResumableLoader(DATA, 4, seed=7), 0)
    assert torch.equal(torch.get_rng_state(), before)
    assert batches(ResumableLoader(DATA, 4, seed=7), 0) == one != batches(ResumableLoader(DATA, 4, seed=8), 0)
    assert batches(ResumableLoader(DATA, 4, shuffle=False), 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_position_left_at_the_end_of_an_epoch_starts_the_next_one_whole() -> None:
    loader = ResumableLoader(DATA, 5)
    batches(loader, 0)
    assert loader.state_dict()["mid_epoch"] is False
    restored = ResumableLoader(DATA, 5)
    restored.load_state_dict(loader.state_dict())
    assert len(batches(restored, 1)) == 2


def test_resuming_with_another_batch_size_is_refused() -> None:
    loader = ResumableLoader(DATA, 3)
    batches(loader, 0, count=1)
    other = ResumableLoader(DATA, 4)
    other.load_state_dict(loader.state_dict())
    with pytest.raises(ConfigError, match=r"trained in batches of 3, this run asks for 4; resume it with batch_size 3"):
        batches(other, 0)


def test_bad_arguments_say_what_to_give() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        ResumableLoader(DATA, 0)
    with pytest.raises(
        TypeError, match="ResumableLoader sets drop_last, sampler itself; give batch_size, shuffle and seed"
    ):
        ResumableLoader(DATA, 2, sampler=None, drop_last=True)


def test_the_position_counts_batches_handed_out_not_those_workers_loaded_ahead() -> None:
    data = TensorDataset(torch.arange(40))
    whole = batches(ResumableLoader(data, 4, seed=3), 0)
    loader = ResumableLoader(data, 4, seed=3, num_workers=2)  # each worker loads 2 batches ahead
    assert batches(loader, 0, count=3) == whole[:3]
    assert loader.state_dict()["done"] == 3
    again = ResumableLoader(data, 4, seed=3, num_workers=2)
    again.load_state_dict(loader.state_dict())
    assert batches(again, 0) == whole[3:]
