"""TrainingState: capture, save (weights-only safe), load and restore give an exact resume."""

from __future__ import annotations

import random
import io
from pathlib import Path

import pytest

import numpy as np
import torch

from expckpt.serialize.checkpoint_file import load_checkpoint, write_temp
from expckpt.state.state import FORMAT, TrainingState, capture_rng, restore_rng


def build(seed: int) -> TrainingState:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return TrainingState(model=model, optimizer=optimizer, scheduler=scheduler)


def train(state: TrainingState, steps: int) -> None:
    """Steps that consume every RNG: data from numpy, shuffling from random, dropout from torch."""
    state.model.train()
    for _ in range(steps):
        x = torch.from_numpy(np.random.standard_normal((5, 6)).astype(np.float32))
        order = list(range(5))
        random.shuffle(order)
        loss = state.model(x[order]).pow(2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1


def draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(), torch.rand(3)


def snapshot(state: TrainingState) -> dict:
    return {k: v.clone() for k, v in state.model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_capture_save_load_restore_resumes_exactly(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    original = build(seed=0)
    train(original, 3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's generator state
    np.random.standard_normal()  # and in NumPy's
    original.best = {"metric": "acc", "value": 0.75, "step": 1}
    original.extras.update({"sampler_pos": 17, "plateau": 2, "seen": torch.tensor([3, 4]), "note": "warm"})

    written = write_temp(original.capture(), tmp_path / "model.pt")
    written.publish()

    # What the uninterrupted run does next:
    expected_draws = draws()
    train(original, 3)
    expected_weights = snapshot(original)
    expected_lr = original.scheduler.get_last_lr()

    # A fresh process: other weights, other RNG states, an untouched optimizer.
    random.seed(99)
    np.random.seed(99)
    resumed = build(seed=123)
    assert resumed.step == -1 and resumed.best is None and resumed.extras == {}
    resumed.extras["stale"] = True
    payload = load_checkpoint(tmp_path / "model.pt")  # torch.load(weights_only=True) inside
    assert payload["format"] == FORMAT and payload["step"] == 2
    resumed.restore(payload)

    assert resumed.step == 2
    assert resumed.best == {"metric": "acc", "value": 0.75, "step": 1}
    assert set(resumed.extras) == {"sampler_pos", "plateau", "seen", "note"}
    assert resumed.extras["sampler_pos"] == 17 and torch.equal(resumed.extras["seen"], torch.tensor([3, 4]))
    assert resumed.scheduler.last_epoch == 3 and resumed.optimizer.state_dict()["state"][0]["step"] == 3

    got_draws = draws()
    assert got_draws[:4] == expected_draws[:4] and torch.equal(got_draws[4], expected_draws[4])
    train(resumed, 3)
    assert_same_weights(snapshot(resumed), expected_weights)
    assert resumed.scheduler.get_last_lr() == expected_lr
    assert resumed.step == original.step == 5


def test_captured_rng_is_weights_only_safe(tmp_path: Path) -> None:
    torch.save({"rng": capture_rng()}, tmp_path / "rng.pt")
    rng = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    expected = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng(rng)
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_restore_without_optional_parts(tmp_path: Path) -> None:
    """A model-only checkpoint restores the model and leaves other objects as they were."""
    torch.manual_seed(0)
    source = TrainingState(model=torch.nn.Linear(3, 1), step=7)
    written = write_temp(source.capture(), tmp_path / "model.pt")
    written.publish()
    payload = load_checkpoint(tmp_path / "model.pt")
    assert "optimizer" not in payload and "best" not in payload

    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    target = TrainingState(model=model, optimizer=optimizer, best={"metric": "loss", "value": 1.0, "step": 0})
    optimizer_before = optimizer.state_dict()
    target.restore(payload)
    assert_same_weights(snapshot(target), snapshot(source))
    assert target.step == 7 and target.best is None and target.extras == {}
    assert target.optimizer.state_dict() == optimizer_before  # nothing saved: left as it was


def test_capturing_rng_creates_no_cuda_context(tmp_path: Path) -> None:
    """A CPU-only run saves no CUDA generator, and asking for one must not start CUDA."""
    if torch.cuda.is_initialized():
        pytest.skip("CUDA was initialised in this process by an earlier test")
    state = build(seed=0)
    train(state, 1)
    rng = capture_rng()
    assert "cuda" not in rng and not torch.cuda.is_initialized()
    write_temp(state.capture(), tmp_path / "model.pt").publish()
    restore_rng(load_checkpoint(tmp_path / "model.pt")["rng"])
    assert not torch.cuda.is_initialized()


def saved_bytes(state: TrainingState) -> bytes:
    buffer = io.BytesIO()
    torch.save(state.capture(), buffer)
    return buffer.getvalue()


def test_resumed_run_saves_the_file_an_uninterrupted_run_saves(tmp_path: Path) -> None:
    """Same values, same bytes: the resumed run's checkpoint is the uninterrupted run's cache object."""
    random.seed(1)
    np.random.seed(1)
    original = build(seed=0)
    train(original, 2)
    written = write_temp(original.capture(), tmp_path / "model.pt")
    written.publish()
    train(original, 2)
    uninterrupted = write_temp(original.capture(), tmp_path / "u.pt")

    random.seed(7)
    np.random.seed(7)
    resumed = build(seed=5)
    resumed.restore(load_checkpoint(tmp_path / "model.pt"))
    train(resumed, 2)
    again = write_temp(resumed.capture(), tmp_path / "r.pt")
    assert again.tmp.read_bytes() == uninterrupted.tmp.read_bytes()
    assert again.md5 == uninterrupted.md5
