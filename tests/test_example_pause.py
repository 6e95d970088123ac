"""The plain, DDP and sharded DCP examples pause at the next batch (issue 24, B), each through a
real ``dvc exp run``: a pause request mid-epoch saves there, with the epoch's ``DataPosition``,
and the resumed run's last checkpoint is bitwise the uninterrupted run's.

The request arrives while rank 0 publishes epoch 0 (``EXPCKPT_PAUSE_AT=after-ref:0`` holds it
there), so every run pauses after the first batch of epoch 1: mid-epoch, every time. SIGUSR1 and
SIGTERM go to the training processes (every rank, not torchrun), as a cluster sends them.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from conftest import run
from contractkit import back_to_branch, kill_tree, signal_training, start, wait_for
from integrationkit import baseline, checkpoint_refs, make_example_project, meta, payload, same, training_state

pytestmark = pytest.mark.slow

EPOCHS = 3
TRAIN = 1438  # training samples of the examples' digits; 32 a batch
HOLD = {"EXPCKPT_PAUSE_AT": "after-ref:0", "EXPCKPT_PAUSE_SECONDS": "3"}


def exact(example: str, project: Path, commit: str, tmp: Path) -> dict[str, Any]:
    """What must be bitwise equal after a resume, with the data position."""
    if example == "dcp":
        from test_integration_dcp import dcp_state

        state = dcp_state(project, commit, tmp)
        return {k: v for k, v in state.items() if k in ("model", "optimizer", "position") or k.startswith("expckpt/")}
    loaded = payload(project, commit)
    return {**training_state(loaded), "position": loaded["position"]}


def position(example: str, project: Path, commit: str, tmp: Path) -> dict[str, Any]:
    return exact(example, project, commit, tmp)["position"]


def request_pause(how: str, project: Path, exp: str) -> None:
    if how == "stop":
        result = run("expckpt", "stop", exp, cwd=project)
        assert f"Asked the run of {exp} to pause" in result.stdout
    else:
        assert signal_training(exp, project, getattr(signal, how)), "no training process to signal"


@pytest.mark.parametrize(
    ("example", "how", "batches"),
    [("plain", "stop", 45), ("ddp", "SIGUSR1", 23), ("dcp", "SIGTERM", 23)],
    ids=["plain", "ddp", "dcp"],
)
def test_a_pause_mid_epoch_resumes_at_the_next_batch_bitwise(
    tmp_path: Path, example: str, how: str, batches: int
) -> None:
    p = make_example_project(tmp_path / "p", example, epochs=EPOCHS)
    base = baseline(p)
    run("dvc", "exp", "run", "-n", "ref", cwd=p)
    reference = checkpoint_refs(p, base, "ref")
    assert sorted(reference) == list(range(EPOCHS))
    assert position(example, p, reference[0], tmp_path)["mid_epoch"] is False
    run("expckpt", "reset", cwd=p)

    proc = start(p, "held", env=HOLD)
    try:
        wait_for(p, base, "held", proc, lambda refs: 0 in refs)  # rank 0 is held just after publishing it
        request_pause(how, p, "held")
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            kill_tree(proc, "held", p)
    back_to_branch(p)
    held = checkpoint_refs(p, base, "held")
    why = "expckpt stop" if how == "stop" else how
    assert re.search(rf"^expckpt: paused by {why} at step 1 \(held@1\); exiting with status 75", output, re.M), output
    assert sorted(held) == [0, 1] and meta(p, held[1])["paused"] is True
    at = position(example, p, held[1], tmp_path)
    assert (at["epoch"], at["done"], at["mid_epoch"]) == (1, 1, True), f"one of {batches} batches of epoch 1"
    if example == "plain":  # its order came from the RNG: kept; a DistributedSampler's is drawn again
        assert sorted(at["order"].tolist()) == list(range(TRAIN))
    else:
        assert "order" not in at

    run("dvc", "exp", "apply", "held@1", cwd=p)
    out = run("dvc", "exp", "run", "-n", "resumed", cwd=p).stdout

    assert re.search(r"Resuming from (model\.pt|ckpt) \(held@1\): 1 steps done", out), out
    resumed = checkpoint_refs(p, base, "resumed")
    assert sorted(resumed) == [1, 2] and meta(p, resumed[1])["parent"] == held[1]
    for step in (1, 2):
        ours, theirs = exact(example, p, resumed[step], tmp_path), exact(example, p, reference[step], tmp_path)
        assert same(ours, theirs), f"{example}: step {step} differs from the uninterrupted run"
