"""torchrun DDP (2 processes, CPU, gloo) through the real ``dvc exp run`` of ``examples/ddp``.

First, without DVC: two gloo processes check the coordination itself (same checkpoint on every
rank, each rank's RNG back, a step mismatch and a rank-0 failure raised on every rank, no hang).

One project per module (8 epochs, keep_last 3 + the best by acc); the tests run in order: a
first run (checkpoints published once, by rank 0, with metrics; retention), apply a checkpoint
and branch off it (every rank resumes from it: exact), SIGKILL of rank 1 and resume (bitwise
equal to the uninterrupted run, per-rank RNGs included), verify.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from conftest import run
from integrationkit import (
    baseline,
    checkpoint_refs,
    lineage,
    make_example_project,
    meta,
    payload,
    run_and_kill_rank,
    same,
    show_json,
    training_state,
)

EPOCHS = 8
CHECKPOINT = {"every": 1, "keep_last": 3, "keep_best": 1, "monitor": "acc", "mode": "max"}
CHECKPOINT_LINE = re.compile(r"^Checkpoint experiment '([^']+)'", re.M)


def _ranks(rank: int, tmp: str) -> None:
    """One of two gloo ranks; writes what it saw to ``rank<N>.json``."""
    import torch.distributed as dist

    from expckpt import TrainingState
    from expckpt.errors import ConfigError, ExpCkptError
    from expckpt import Checkpointer

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    seen: dict[str, Any] = {}
    try:
        torch.manual_seed(100 + rank)
        model = torch.nn.Linear(2, 2)
        checkpointer = Checkpointer.from_env(Path(tmp) / "model.pt", {"every": 1, "keep_last": 2})
        state = TrainingState(model=model)
        seen["fresh"] = checkpointer.restore(state) is None
        for step in (0, 1):
            torch.rand(3)  # each rank its own draws
            seen["stop"] = checkpointer.save(state, step, {"loss": 1.0 / (step + 1)}).stop
        saved_rng = torch.get_rng_state()
        torch.rand(5)
        model.weight.data.zero_()
        seen["resumed"] = checkpointer.restore(state).step
        seen["rng_back"] = torch.equal(torch.get_rng_state(), saved_rng)
        seen["weights"] = model.weight.detach().flatten().tolist()
        try:
            checkpointer.save(state, 2 + rank, {})
        except ConfigError as exc:
            seen["mismatch"] = str(exc)
        broken = Checkpointer.from_env(Path(tmp) / "missing" / "model.pt", None)
        broken.restore(TrainingState(model=model))
        try:
            broken.save(TrainingState(model=model), 0, {})
        except ExpCkptError as exc:
            seen["rank0_failed"] = str(exc)
        except OSError as exc:
            seen["rank0_failed"] = f"own: {exc}"
    finally:
        dist.destroy_process_group()
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_ranks_restore_the_same_checkpoint_and_fail_together(tmp_path: Path) -> None:
    context = mp.start_processes(_ranks, args=(str(tmp_path),), nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:  # a rank waiting for another one forever
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks hung")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for seen in (rank0, rank1):
        assert seen["fresh"] is True and seen["stop"] is None
        assert seen["resumed"] == 1
        assert seen["rng_back"] is True  # each rank its own RNG state, not rank 0's
        assert "ranks completed different steps [2, 3]" in seen["mismatch"]
    assert rank0["weights"] == rank1["weights"]  # rank 0's saved weights on both
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["step"] == 1 and len(payload["extras"]["_expckpt_rank_rng"]) == 2
    assert rank0["rank0_failed"].startswith("could not write")  # rank 0's own StorageError
    assert rank1["rank0_failed"].startswith("rank 0 failed, so rank 1 stops too")


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    project = make_example_project(tmp_path_factory.mktemp("ddp") / "p", "ddp", epochs=EPOCHS, checkpoint=CHECKPOINT)
    base = baseline(project)
    out = run("dvc", "exp", "run", "-n", "ref", cwd=project).stdout
    return {"project": project, "base": base, "out": out}


@pytest.mark.slow
def test_rank_zero_publishes_each_epoch_once_with_metrics(proj: dict[str, Any]) -> None:
    p, base, out = proj["project"], proj["base"], proj["out"]
    assert CHECKPOINT_LINE.findall(out) == [f"ref@{n}" for n in range(EPOCHS)]  # once each, not per rank
    refs = checkpoint_refs(p, base, "ref")
    assert {EPOCHS - 3, EPOCHS - 2, EPOCHS - 1} <= set(refs) and len(refs) <= 4  # keep_last 3 + best
    assert sorted(lineage(p, refs[EPOCHS - 1])) == list(range(EPOCHS))
    for step, commit in refs.items():
        record = meta(p, commit)
        metrics = show_json(p, commit, "dvclive/metrics.json")
        assert (record["step"], metrics["step"]) == (step, step)
        assert record["metrics"]["acc"] == pytest.approx(metrics["acc"])
        state = payload(p, commit)
        assert state["step"] == step
        assert len(state["extras"]["_expckpt_rank_rng"]) == 2  # both ranks' RNG states


@pytest.mark.slow
def test_apply_and_run_resumes_every_rank_exactly(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    k = EPOCHS - 3
    run("dvc", "exp", "apply", f"ref@{k}", cwd=p)
    out = run("dvc", "exp", "run", "-n", "branch", cwd=p).stdout
    assert out.count(f"Resuming from model.pt (ref@{k}): {k + 1} steps done") == 1, out  # by rank 0 only
    branch = checkpoint_refs(p, base, "branch")
    assert sorted(branch) == list(range(k + 1, EPOCHS))
    assert meta(p, branch[k + 1])["parent"] == refs[k]
    assert same(training_state(payload(p, branch[EPOCHS - 1])), training_state(payload(p, refs[EPOCHS - 1])))
    chains = {c["experiment"]: c for c in json.loads(run("expckpt", "show", "--json", cwd=p).stdout)}
    assert chains["branch"]["resumed_from"] == {"commit": refs[k], "name": f"ref@{k}"}


@pytest.mark.slow
def test_killed_rank_leaves_complete_checkpoints_and_resume_is_exact(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    run("expckpt", "reset", cwd=p)
    output = run_and_kill_rank(p, base, "killed", rank=1, after_step=1)
    killed = checkpoint_refs(p, base, "killed")
    assert 1 <= max(killed) < EPOCHS - 1, output
    for step, commit in killed.items():
        assert payload(p, commit)["step"] == step
    last = max(killed)
    out = run("dvc", "exp", "run", "-n", "resumed", cwd=p).stdout
    assert f"Resuming from model.pt (killed@{last}): {last + 1} steps done" in out, out
    resumed = checkpoint_refs(p, base, "resumed")
    chain = lineage(p, resumed[EPOCHS - 1])
    assert sorted(chain) == list(range(EPOCHS)) and chain[last] == killed[last]
    assert same(training_state(payload(p, resumed[EPOCHS - 1])), training_state(payload(p, refs[EPOCHS - 1])))


@pytest.mark.slow
def test_verify_all_passes(proj: dict[str, Any]) -> None:
    result = run("expckpt", "verify", "--all", cwd=proj["project"])
    assert result.returncode == 0, result.stdout + result.stderr
