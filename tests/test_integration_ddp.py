"""torchrun DDP (2 processes, CPU, gloo) through the real ``dvc exp run`` of ``examples/ddp``.

One project per module (8 epochs, keep_last 3 + the best by acc); the tests run in order: a
first run (checkpoints published once, by rank 0, with metrics; retention), apply a checkpoint
and branch off it (every rank resumes from it: exact), SIGKILL of rank 1 and resume (bitwise
equal to the uninterrupted run, per-rank RNGs included), verify.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

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

pytestmark = pytest.mark.slow

EPOCHS = 8
CHECKPOINT = {"every": 1, "keep_last": 3, "keep_best": 1, "monitor": "acc", "mode": "max"}
CHECKPOINT_LINE = re.compile(r"^Checkpoint experiment '([^']+)'", re.M)


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    project = make_example_project(tmp_path_factory.mktemp("ddp") / "p", "ddp", epochs=EPOCHS, checkpoint=CHECKPOINT)
    base = baseline(project)
    out = run("dvc", "exp", "run", "-n", "ref", cwd=project).stdout
    return {"project": project, "base": base, "out": out}


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


def test_apply_and_run_resumes_every_rank_exactly(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    k = EPOCHS - 3
    run("dvc", "exp", "apply", f"ref@{k}", cwd=p)
    out = run("dvc", "exp", "run", "-n", "branch", cwd=p).stdout
    assert f"Resuming from model.pt (ref@{k}): {k + 1} epochs done" in out
    branch = checkpoint_refs(p, base, "branch")
    assert sorted(branch) == list(range(k + 1, EPOCHS))
    assert meta(p, branch[k + 1])["parent"] == refs[k]
    assert same(training_state(payload(p, branch[EPOCHS - 1])), training_state(payload(p, refs[EPOCHS - 1])))
    chains = {c["experiment"]: c for c in json.loads(run("expckpt", "show", "--json", cwd=p).stdout)}
    assert chains["branch"]["resumed_from"] == {"commit": refs[k], "name": f"ref@{k}"}


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
    assert f"Resuming from model.pt (killed@{last}): {last + 1} epochs done" in out, out
    resumed = checkpoint_refs(p, base, "resumed")
    chain = lineage(p, resumed[EPOCHS - 1])
    assert sorted(chain) == list(range(EPOCHS)) and chain[last] == killed[last]
    assert same(training_state(payload(p, resumed[EPOCHS - 1])), training_state(payload(p, refs[EPOCHS - 1])))


def test_verify_all_passes(proj: dict[str, Any]) -> None:
    result = run("expckpt", "verify", "--all", cwd=proj["project"])
    assert result.returncode == 0, result.stdout + result.stderr
