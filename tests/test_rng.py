"""rng: every generator a checkpoint holds comes back exactly, and nothing else is touched."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from expckpt.state.rng import capture_rng, restore_rng


def draws() -> tuple[float, float, list[float], float]:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(1).item()


def test_restore_puts_python_numpy_and_torch_back_to_the_captured_point() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gauss value in Python's state
    np.random.standard_normal()  # and a cached one in NumPy's
    saved = capture_rng()
    expected = draws()
    for _ in range(5):
        draws()
    restore_rng(saved)
    assert draws() == expected


def test_the_captured_state_is_made_of_values_a_safe_checkpoint_holds() -> None:
    saved = capture_rng()
    assert set(saved) == {"python", "numpy", "torch"}  # no CUDA: this process never initialised it
    assert isinstance(saved["torch"], torch.Tensor) and saved["torch"].dtype == torch.uint8
    kind, keys, pos, has_gauss, cached = saved["numpy"]
    assert kind == "MT19937" and isinstance(keys, torch.Tensor) and keys.shape == (624,)
    assert type(pos) is int and type(has_gauss) is int and type(cached) is float
    version, internal, _ = saved["python"]
    assert version == 3 and isinstance(internal, list) and len(internal) == 625
    assert not torch.cuda.is_initialized()


def test_the_capture_is_a_copy_not_a_view_of_the_live_generators() -> None:
    np.random.seed(7)
    saved = capture_rng()
    keys_before = saved["numpy"][1].clone()
    np.random.rand(1000)  # advances (and refills) the generator's key array
    assert torch.equal(saved["numpy"][1], keys_before)


def test_the_state_survives_a_weights_only_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    path = tmp_path / "rng.pt"
    torch.save({"rng": capture_rng()}, path)
    expected = draws()
    restore_rng(torch.load(path, weights_only=True)["rng"])
    assert draws() == expected


def test_a_partial_state_restores_what_it_has_and_leaves_the_rest() -> None:
    torch.manual_seed(5)
    torch_only = {"torch": capture_rng()["torch"]}
    first = torch.rand(2)
    random.seed(99)
    python_next = random.Random(99).random()
    restore_rng(torch_only)
    assert torch.equal(torch.rand(2), first)
    assert random.random() == python_next  # Python's generator was not reset
