"""``DataPosition``: a resume starts at the first batch not trained, with the epoch's saved order
(``batches``) or, for a ``DistributedSampler``, the order drawn again on every rank (``sampled``)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from expckpt.errors import ConfigError
from expckpt.state.datapos import DataPosition

SAMPLES, BATCH = 50, 8  # 7 batches, the last one short


def shares() -> list[DistributedSampler]:
    return [DistributedSampler(range(SAMPLES), num_replicas=2, rank=r, shuffle=True, seed=3) for r in (0, 1)]


def trained(position: DataPosition, epoch: int, sampler: DistributedSampler, stop_after: int | None = None) -> list:
    out = []
    for batch in position.sampled(epoch, sampler, BATCH):
        out.append(batch.tolist())
        if len(out) == stop_after:
            break
    return out


@pytest.mark.parametrize("done", [1, 2, 4])
def test_sampled_resumes_every_rank_from_one_ranks_position_at_the_next_batch(done: int) -> None:
    whole = [trained(DataPosition(), 5, s) for s in shares()]
    assert whole[0] != whole[1] and len(whole[0]) == 4  # 25 samples a rank: 4 batches

    paused = [DataPosition(), DataPosition()]
    for position, sampler in zip(paused, shares()):
        assert trained(position, 5, sampler, stop_after=done) == whole[sampler.rank][:done]
    saved = paused[0].state_dict()  # a checkpoint holds rank 0's position
    assert saved == {"epoch": 5, "done": done, "mid_epoch": True, "batch_size": BATCH}, "no order: each rank its own"

    for sampler in shares():  # a new process per rank, the sampler's epoch not yet set
        position = DataPosition()
        position.load_state_dict(saved)
        assert trained(position, 5, sampler) == whole[sampler.rank][done:]
        assert position.state_dict() == {"epoch": 5, "done": 4, "mid_epoch": False, "batch_size": BATCH}
        assert sampler.epoch == 5


def test_a_finished_epoch_starts_the_next_one_from_its_first_batch() -> None:
    (sampler, _) = shares()
    position = DataPosition()
    trained(position, 0, sampler)
    restored = DataPosition()
    restored.load_state_dict(position.state_dict())
    assert trained(restored, 1, sampler) == trained(DataPosition(), 1, shares()[0])


@pytest.mark.parametrize("done", [3, 7])
def test_batches_resumes_with_the_saved_order_drawing_nothing(done: int) -> None:
    torch.manual_seed(0)
    whole = [b.tolist() for b in DataPosition().batches(0, lambda: torch.randperm(SAMPLES), BATCH)]
    torch.manual_seed(0)
    position = DataPosition()
    for n, _ in enumerate(position.batches(0, lambda: torch.randperm(SAMPLES), BATCH), 1):
        if n == done:  # a pause after the last batch too: the epoch is not finished yet
            break
    saved = position.state_dict()
    assert saved["mid_epoch"] is True and saved["done"] == done and len(saved["order"]) == SAMPLES

    restored = DataPosition()
    restored.load_state_dict(saved)
    rng = torch.get_rng_state()
    rest = [b.tolist() for b in restored.batches(0, lambda: torch.randperm(SAMPLES), BATCH)]
    assert rest == whole[done:] and torch.equal(torch.get_rng_state(), rng)
    assert "order" not in restored.state_dict()


def test_a_position_saved_before_mid_epoch_was_recorded_still_loads() -> None:
    restored = DataPosition()
    restored.load_state_dict({"epoch": 2, "done": 1, "order": torch.arange(SAMPLES)})
    assert restored.mid_epoch and [b[0].item() for b in restored.batches(2, torch.randperm, 10)] == [10, 20, 30, 40]
    restored.load_state_dict({"epoch": 2, "done": 5, "order": None})
    assert not restored.mid_epoch


def test_a_resume_with_another_batch_size_is_refused_in_one_line() -> None:
    (sampler, _) = shares()
    position = DataPosition()
    next(position.sampled(0, sampler, BATCH))
    restored = DataPosition()
    restored.load_state_dict(position.state_dict())
    with pytest.raises(ConfigError) as error:
        restored.sampled(0, sampler, 4)
    assert (
        str(error.value)
        == "the paused epoch 0 was trained in batches of 8, this run asks for 4; resume it with batch_size 8"
    )
    assert error.value.key == "batch_size"


def test_a_position_past_the_end_of_the_order_is_refused_in_one_line() -> None:
    position = DataPosition()
    position.load_state_dict({"epoch": 0, "done": 6, "mid_epoch": True, "batch_size": BATCH})
    (sampler, _) = shares()
    with pytest.raises(
        ConfigError,
        match=r"^the paused epoch 0 had 6 batches trained, but its order now has only 25"
        r" samples \(8 a batch\); resume with the data of the paused run$",
    ):
        position.sampled(0, sampler, BATCH)


def test_sampled_needs_a_sampler_with_set_epoch() -> None:
    with pytest.raises(TypeError, match=r"^list has no set_epoch"):
        DataPosition().sampled(0, [1, 2, 3], 2)  # type: ignore[arg-type]
