"""CUDA checkpoints: exact resume, pinned staging, identical files, no CUDA side effects.

Tests that need a GPU skip cleanly without one; the CUDA-context check also runs on CPU-only
machines (it must hold there too, trivially, and it is the regression test where CUDA exists).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from expckpt.serialize.atomic import WrittenFile
from expckpt.serialize.checkpoint_file import load_checkpoint, write_temp
from expckpt.state.state import TrainingState
from expckpt.serialize.writer import AsyncWriter

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda", 0)


def build(device: torch.device, seed: int) -> TrainingState:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    return TrainingState(model=model, optimizer=optimizer)


def train(state: TrainingState, steps: int, device: torch.device) -> None:
    state.model.train()
    for _ in range(steps):
        x = torch.randn(16, 32, device=device)  # the CUDA generator: must resume exactly too
        loss = state.model(x).square().mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.step += 1


def save_async(payload: Any, dest: Path) -> WrittenFile:
    written: list[WrittenFile] = []
    writer = AsyncWriter(lambda job: written.append(write_temp(job, dest)))
    try:
        writer.submit(payload, lambda snapshot: snapshot)
        writer.drain()
    finally:
        writer.close()
    return written[0]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_resume_on_cuda_is_bitwise_exact(tmp_path: Path, cuda: torch.device, mode: str) -> None:
    original = build(cuda, seed=0)
    train(original, 3, cuda)
    payload = original.capture()
    assert "cuda" in payload["rng"]  # CUDA is in use: its generators are saved
    written = (
        write_temp(payload, tmp_path / "model.pt") if mode == "sync" else save_async(payload, tmp_path / "model.pt")
    )
    written.publish()
    train(original, 3, cuda)
    expected = {k: v.clone() for k, v in original.model.state_dict().items()}

    torch.cuda.manual_seed_all(1234)
    resumed = build(cuda, seed=99)
    resumed.restore(load_checkpoint(tmp_path / "model.pt"))
    train(resumed, 3, cuda)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_sync_and_async_files_of_a_cuda_state_are_identical_and_cpu_tagged(tmp_path: Path, cuda: torch.device) -> None:
    state = build(cuda, seed=0)
    train(state, 2, cuda)
    payload = state.capture()
    sync = write_temp(payload, tmp_path / "sync.pt")
    asyn = save_async(payload, tmp_path / "async.pt")
    assert sync.tmp.read_bytes() == asyn.tmp.read_bytes()
    loaded = torch.load(sync.tmp, weights_only=True)  # no map_location: the tags themselves say cpu
    assert all(t.device.type == "cpu" for t in loaded["model"].values())

    expected = io.BytesIO()  # the same values saved as CPU tensors give the same file
    torch.save(_on_cpu(payload), expected)
    assert sync.tmp.read_bytes() == expected.getvalue()


def _on_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        copied = type(obj)((k, _on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, list):
        return [_on_cpu(v) for v in obj]
    return obj


def test_pinned_staging_saves_the_values_of_submit_time(tmp_path: Path, cuda: torch.device) -> None:
    """The next optimizer step, enqueued right after submit, must not reach the file, and the
    writer must not read the pinned buffers before the copies into them are done."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)]).to(cuda)  # 134 MB
    base = {k: v.clone() for k, v in model.state_dict().items()}
    written: list[WrittenFile] = []
    writer = AsyncWriter(lambda job: written.append(write_temp(job, tmp_path / "model.pt")))
    try:
        for round_ in range(2):  # the second round reuses the first round's pinned buffers
            with torch.no_grad():
                for key, value in model.state_dict().items():
                    value.copy_(base[key] + round_)
            expected = {k: v.cpu() for k, v in model.state_dict().items()}
            written.clear()
            torch.cuda._sleep(200_000_000)  # GPU busy ~0.1 s: the copies wait behind it
            writer.submit(model.state_dict(), lambda snapshot: snapshot)
            with torch.no_grad():  # the next optimizer step, enqueued right after the call
                for p in model.parameters():
                    p.fill_(7.0)
            writer.drain()
            saved = torch.load(written[0].tmp, weights_only=True)
            assert all(torch.equal(saved[k], expected[k]) for k in expected), f"round {round_}"
    finally:
        writer.close()


def test_stager_reuses_pinned_buffers_for_cuda_tensors(cuda: torch.device) -> None:
    from expckpt.serialize.staging import Stager

    weights = {"w": torch.randn(1000, device=cuda), "v": torch.randn(10, device=cuda)[2:5]}
    stager = Stager()
    first = stager.stage(weights)
    first.wait_ready()
    assert first.events and all(t.device.type == "cpu" and t.is_pinned() for t in first.state.values())
    assert torch.equal(first.state["v"], weights["v"].cpu())
    pointer = first.state["w"].data_ptr()
    second = stager.stage(weights)
    second.wait_ready()
    assert second.state["w"].data_ptr() == pointer


CPU_ONLY_RUN = """
import sys, torch
from pathlib import Path
from expckpt.serialize.checkpoint_file import write_temp
from expckpt.state.state import TrainingState
from expckpt.serialize.writer import AsyncWriter
model = torch.nn.Linear(8, 2)
state = TrainingState(model=model, optimizer=torch.optim.Adam(model.parameters()))
model(torch.randn(4, 8)).sum().backward(); state.optimizer.step()
out = Path(sys.argv[1])
write_temp(state.capture(), out / "sync.pt").publish()
writer = AsyncWriter(lambda job: write_temp(job, out / "async.pt").publish())
writer.submit(state.capture(), lambda snapshot: snapshot); writer.drain(); writer.close()
print("cuda initialised:", torch.cuda.is_initialized(), "available:", torch.cuda.is_available())
"""


@pytest.mark.slow
def test_cpu_only_checkpoints_create_no_cuda_context(tmp_path: Path) -> None:
    """Runs in a fresh process: this one may have used CUDA in other tests."""
    proc = subprocess.run(
        [sys.executable, "-c", CPU_ONLY_RUN, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "cuda initialised: False" in proc.stdout
    assert "cuda" not in load_checkpoint(tmp_path / "sync.pt")["rng"]
