"""Asynchronous checkpoints: same refs, same bytes, same crash-safety as synchronous ones."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_project, run, train_in_exp_env
from expckpt.serialize.atomic import WrittenFile
from expckpt.store.catalog import Catalog
from expckpt.serialize.checkpoint_file import write_temp
from expckpt.store.gitstore import GitStore
from expckpt.serialize.staging import Stager
from expckpt.serialize.writer import AsyncWriter


@pytest.mark.slow
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


def tricky_state() -> dict[str, Any]:
    """A state whose storage sharing torch.save preserves: tied weights, views, a repeated tensor."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(64, 32)
    model = torch.nn.Sequential(encoder, torch.nn.ReLU(), torch.nn.Linear(32, 64))
    model[2].weight = torch.nn.Parameter(encoder.weight.t())  # tied: a transposed view of one storage
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 64)).sum().backward()
    optimizer.step()
    base = torch.arange(100.0)
    shared = torch.randn(50)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "views": [base[10:20], base[::7], base.view(10, 10)[2]],
        "twice": [shared, shared],
        "step": 3,
        "note": "text",
    }


def publish_async(state: Any, dest: Path) -> WrittenFile:
    written: list[WrittenFile] = []
    writer = AsyncWriter(lambda job: written.append(write_temp(job, dest)))
    try:
        assert writer.submit(state, lambda snapshot: snapshot)
        writer.drain()
    finally:
        writer.close()
    return written[0]


def test_sync_and_async_files_of_the_same_state_are_identical(tmp_path: Path) -> None:
    state = tricky_state()
    sync = write_temp(state, tmp_path / "sync.pt")
    asyn = publish_async(state, tmp_path / "async.pt")
    assert sync.tmp.read_bytes() == asyn.tmp.read_bytes()
    assert (sync.md5, sync.size) == (asyn.md5, asyn.size)


def test_staged_copy_keeps_storage_sharing() -> None:
    state = tricky_state()
    copy = Stager().stage(state).state
    weights = copy["model"]
    assert weights["0.weight"].untyped_storage().data_ptr() == weights["2.weight"].untyped_storage().data_ptr()
    assert weights["0.weight"].untyped_storage().data_ptr() != state["model"]["0.weight"].untyped_storage().data_ptr()
    views = copy["views"]
    assert len({v.untyped_storage().data_ptr() for v in views}) == 1
    assert torch.equal(views[1], state["views"][1]) and views[1].stride() == (7,)
    assert copy["twice"][0] is copy["twice"][1]


def test_staged_snapshot_is_independent_of_later_training_steps() -> None:
    model = torch.nn.Linear(4, 2)
    snapshot = Stager().stage(model.state_dict()).state
    before = {k: v.clone() for k, v in snapshot.items()}

    with torch.no_grad():
        model.weight.add_(1.0)  # the next optimizer step mutates the live weights in place

    for key in before:
        assert torch.equal(snapshot[key], before[key]), "the copy must not see later updates"


def test_stager_reuses_its_buffers() -> None:
    model = torch.nn.Linear(4, 2)
    stager = Stager()
    first = stager.stage(model.state_dict()).state["weight"]
    second = stager.stage(model.state_dict()).state["weight"]
    assert first.data_ptr() == second.data_ptr()


def test_saved_file_holds_the_values_of_submit_time(tmp_path: Path) -> None:
    """Overwriting the weights right after submit (the next optimizer step) does not reach the file."""
    model = torch.nn.Linear(256, 256)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    started, release = threading.Event(), threading.Event()
    written: list[WrittenFile] = []

    def slow_publish(job: Any) -> None:
        started.set()
        release.wait(10)
        written.append(write_temp(job, tmp_path / "model.pt"))

    writer = AsyncWriter(slow_publish)
    try:
        writer.submit(model.state_dict(), lambda snapshot: snapshot)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(7.0)
        assert started.wait(10)
        release.set()
        writer.drain()
    finally:
        writer.close()
    saved = torch.load(written[0].tmp, weights_only=True)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


class SlowPublisher:
    """A real AsyncWriter job that holds the writer until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.done: list[int] = []

    def __call__(self, job: int) -> None:
        self.release.wait(10)
        self.done.append(job)


@pytest.mark.parametrize("when_busy", ["wait", "skip"])
def test_busy_writer_policy(when_busy: str) -> None:
    said: list[str] = []
    publish = SlowPublisher()
    writer = AsyncWriter(publish, depth=2, when_busy=when_busy, echo=said.append)
    state = {"w": torch.zeros(10)}
    try:
        assert writer.submit(state, lambda _: 1) and writer.submit(state, lambda _: 2)  # both buffers in use
        assert said == [] and writer.busy()
        if when_busy == "skip":
            start = time.perf_counter()
            assert writer.submit(state, lambda _: 3) is False
            assert writer.submit(state, lambda _: 4) is False
            assert time.perf_counter() - start < 1.0  # training went on at once
            assert writer.skipped == 2
            assert len(said) == 1 and "skipped a checkpoint" in said[0] and "when_busy: skip" in said[0]
            publish.release.set()
            writer.drain()
            assert publish.done == [1, 2]
            assert writer.submit(state, lambda _: 5)  # free again: taken
        else:
            threading.Timer(0.3, publish.release.set).start()
            start = time.perf_counter()
            assert writer.submit(state, lambda _: 3)
            waited = time.perf_counter() - start
            assert 0.2 < waited < 5  # only until the oldest was written, not until all were
            assert 0.2 < writer.waited_s < 5
            assert len(said) == 1 and "waited" in said[0] and "when_busy: wait" in said[0]
            assert writer.submit(state, lambda _: 4)
            assert len(said) == 1  # said once
        writer.drain()
        assert publish.done == ([1, 2, 5] if when_busy == "skip" else [1, 2, 3, 4])
    finally:
        publish.release.set()
        writer.close()


def test_unknown_busy_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="when_busy must be one of wait, skip, got 'block'"):
        AsyncWriter(lambda job: None, when_busy="block")


def test_background_failure_surfaces_on_the_training_thread(tmp_path: Path) -> None:
    writer = AsyncWriter(lambda job: write_temp(job, tmp_path / "gone" / "model.pt"))
    try:
        writer.submit({"w": torch.zeros(3)}, lambda snapshot: snapshot)
        with pytest.raises(Exception, match="could not write"):
            writer.drain()
    finally:
        writer.close()
