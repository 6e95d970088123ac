"""Lightning pauses at the next batch and resumes inside the epoch, bitwise (issue 24, B), through
a real ``dvc exp run`` of ``examples/lightning`` (its ``ResumableLoader`` keeps the position).

As in ``test_example_pause.py``, the request arrives while the run publishes epoch 0
(``EXPCKPT_PAUSE_AT=after-ref:0`` holds it there), so the run pauses after the first batch of
epoch 1: mid-epoch, every time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conftest import run
from contractkit import back_to_branch, kill_tree, start, wait_for
from integrationkit import baseline, checkpoint_refs, make_example_project, meta, payload, same, training_state
from test_example_pause import HOLD, request_pause

pytestmark = pytest.mark.slow

EPOCHS = 3
BATCHES = 23  # 1,438 training digits, 64 a batch


def lightning(loaded: dict[str, Any]) -> dict[str, Any]:
    """Lightning's own checkpoint dict inside an expckpt checkpoint."""
    return loaded.get("lightning") or loaded["scaler"]


def position(loaded: dict[str, Any]) -> dict[str, Any]:
    """The ``ResumableLoader``'s state, saved by Lightning with its fit loop."""
    (state,) = lightning(loaded)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    return state


def exact(loaded: dict[str, Any]) -> dict[str, Any]:
    """What must be bitwise equal after a resume: weights, RNG, Lightning's optimizer and scheduler."""
    theirs = lightning(loaded)
    return {
        **training_state(loaded),
        "optimizer_states": theirs["optimizer_states"],
        "lr_schedulers": theirs["lr_schedulers"],
        "global_step": theirs["global_step"],
        "epoch": theirs["epoch"],
    }


@pytest.mark.parametrize("how", ["stop", "SIGUSR1"])
def test_lightning_pauses_mid_epoch_and_resumes_bitwise(tmp_path: Path, how: str) -> None:
    p = make_example_project(tmp_path / "p", "lightning", epochs=EPOCHS)
    base = baseline(p)
    run("dvc", "exp", "run", "-n", "ref", cwd=p)
    reference = checkpoint_refs(p, base, "ref")
    assert sorted(reference) == list(range(EPOCHS))
    run("expckpt", "reset", cwd=p)

    proc = start(p, "held", env=HOLD)
    try:
        wait_for(p, base, "held", proc, lambda refs: 0 in refs)  # held just after publishing it
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
    paused = payload(p, held[1])
    at = position(paused)
    assert (at["epoch"], at["done"], at["mid_epoch"]) == (1, 1, True), f"one of {BATCHES} batches of epoch 1"
    assert lightning(paused)["global_step"] == BATCHES + 1  # one optimizer step into epoch 1

    run("dvc", "exp", "apply", "held@1", cwd=p)
    out = run("dvc", "exp", "run", "-n", "resumed", cwd=p).stdout
    assert "Resuming from model.pt (held@1): 1 steps done" in out, out
    resumed = checkpoint_refs(p, base, "resumed")
    assert sorted(resumed) == [1, 2] and meta(p, resumed[1])["parent"] == held[1]
    for step in (1, 2):
        ours, theirs = payload(p, resumed[step]), payload(p, reference[step])
        assert same(exact(ours), exact(theirs)), f"step {step} differs from the uninterrupted run"
        assert position(ours)["mid_epoch"] is False
    ours, theirs = meta(p, resumed[2])["metrics"], meta(p, reference[2])["metrics"]
    assert ours == theirs  # the epoch after the paused one logs what the uninterrupted run logged
