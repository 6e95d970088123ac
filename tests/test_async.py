"""Asynchronous checkpoints: same refs, same bytes, same crash-safety as synchronous ones."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import make_project, run, train_in_exp_env
from expckpt.catalog import Catalog
from expckpt.gitstore import GitStore
from expckpt.writer import StateCopier


def test_async_run_publishes_the_same_checkpoints_as_a_sync_run(tmp_path: Path) -> None:
    sync = make_project(tmp_path / "sync", epochs=3, checkpoint={"keep_last": None})
    asyn = make_project(tmp_path / "async", epochs=3, checkpoint={"keep_last": None, "async": True})

    train_in_exp_env(sync, "s")
    out = train_in_exp_env(asyn, "a")

    sync_records = Catalog.load(GitStore.open(sync)).records
    async_records = Catalog.load(GitStore.open(asyn)).records
    assert [r.step for r in async_records] == [0, 1, 2]
    assert [r.outs["model.pt"].md5 for r in async_records] == [r.outs["model.pt"].md5 for r in sync_records]
    assert [r.metrics for r in async_records] == [r.metrics for r in sync_records]
    assert out.stdout.count("Checkpoint experiment 'a@") == 3
    assert run("expckpt", "verify", cwd=asyn).returncode == 0


def test_state_copier_snapshot_is_independent_of_later_training_steps() -> None:
    model = torch.nn.Linear(4, 2)
    copier = StateCopier()
    snapshot = copier.copy(model.state_dict())
    before = {k: v.clone() for k, v in snapshot.items()}

    with torch.no_grad():
        model.weight.add_(1.0)  # the next optimizer step mutates the live weights in place

    for key in before:
        assert torch.equal(snapshot[key], before[key]), "the copy must not see later updates"


def test_state_copier_reuses_its_buffers() -> None:
    model = torch.nn.Linear(4, 2)
    copier = StateCopier()
    first = copier.copy(model.state_dict())["weight"]
    second = copier.copy(model.state_dict())["weight"]
    assert first.data_ptr() == second.data_ptr()
