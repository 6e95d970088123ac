"""Hugging Face Trainer through the real ``dvc exp run`` of ``examples/hf`` (offline, CPU).

One project per module (4 epochs of 23 steps, a save per epoch: steps 23, 46, 69, 92; retention
from the TrainingArguments: save_total_limit 2 + the best by accuracy); the tests run in order: a first run (checkpoints named by
global step, with the step's train and eval metrics; retention), apply a checkpoint and branch
off it (the Trainer resumes from it by itself: exact, lineage), SIGKILL and resume (bitwise
equal to the uninterrupted run), verify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run
from integrationkit import (
    baseline,
    checkpoint_refs,
    lineage,
    make_example_project,
    meta,
    payload,
    run_and_kill,
    same,
    show_json,
    training_state,
)

EPOCHS, STEPS_PER_EPOCH = 4, 23
SAVES = [STEPS_PER_EPOCH * (n + 1) for n in range(EPOCHS)]
LAST = SAVES[-1]
CHECKPOINT = {"every": 1, "keep_last": 2, "keep_best": 1, "monitor": "eval_accuracy", "mode": "max"}
"""What the example's TrainingArguments become (no ``checkpoint:`` section)."""


def exact_state(state: dict[str, Any]) -> dict[str, Any]:
    """What must be bitwise equal: weights, RNGs, and the Trainer's optimizer, scheduler and RNG
    files; of trainer_state.json the progress (its log history has run times)."""
    files = state.get("hf") or state["scaler"]  # the Trainer's checkpoint files, as byte tensors
    trainer_state = json.loads(files["trainer_state.json"].numpy().tobytes())
    return {
        **{k: v for k, v in training_state(state).items() if k != "scaler"},
        "files": {name: data for name, data in files.items() if name != "trainer_state.json"},
        "progress": {k: trainer_state[k] for k in ("global_step", "epoch", "best_metric", "best_global_step")},
    }


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        project = make_example_project(tmp_path_factory.mktemp("hf") / "p", "hf", epochs=EPOCHS)
        base = baseline(project)
        out = run("dvc", "exp", "run", "-n", "ref", cwd=project).stdout
        yield {"project": project, "base": base, "out": out}


def test_config_from_training_args_maps_retention(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    from expckpt.policy.config import CheckpointConfig
    from expckpt.integrations.hf import config_from_training_args

    args = TrainingArguments(
        output_dir=str(tmp_path), save_total_limit=3, metric_for_best_model="accuracy", use_cpu=True, report_to="none"
    )
    section = config_from_training_args(args)
    assert section == {"every": 1, "keep_last": 3, "monitor": "eval_accuracy", "mode": "max", "keep_best": 1}
    CheckpointConfig.from_params(section)
    plain = config_from_training_args(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert plain == {"every": 1, "keep_last": None}


@pytest.mark.slow
def test_each_trainer_save_is_a_checkpoint_experiment_with_metrics(proj: dict[str, Any]) -> None:
    p, base, out = proj["project"], proj["base"], proj["out"]
    for step in SAVES:
        assert f"Checkpoint experiment 'ref@{step}'" in out
    refs = checkpoint_refs(p, base, "ref")
    assert set(SAVES[-2:]) <= set(refs) and len(refs) <= 3, out  # keep_last 2 + the best
    assert sorted(lineage(p, refs[LAST])) == SAVES
    assert all(
        meta(p, commit)["settings"]
        == {
            **CHECKPOINT,
            "every_minutes": None,
            "divergence_metric": "loss",
            "divergence_steps": 3,
            "on_divergence": "warn",
            "patience": None,
        }
        for commit in refs.values()
    )
    best = max(refs, key=lambda step: meta(p, refs[step])["metrics"]["eval_accuracy"])
    assert hashlib.md5((p / "model.pt").read_bytes()).hexdigest() == meta(p, refs[best])["outs"]["model.pt"]["md5"]
    assert f"expckpt: model.pt holds the {'last' if best == LAST else 'best'} checkpoint" in out
    for step, commit in refs.items():
        record = meta(p, commit)
        metrics = show_json(p, commit, "dvclive/metrics.json")
        assert (record["step"], metrics["step"]) == (step, step)
        assert {"loss", "eval_loss", "eval_accuracy"} <= record["metrics"].keys()
        assert record["metrics"]["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
        state = payload(p, commit)
        files = state.get("hf") or state["scaler"]
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= files.keys()
        assert "training_args.bin" not in files  # a pickle: never in a checkpoint
        trainer_state = json.loads(files["trainer_state.json"].numpy().tobytes())
        assert trainer_state["global_step"] == step


@pytest.mark.slow
def test_apply_and_run_resumes_the_trainer_exactly(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    k = SAVES[-2]
    run("dvc", "exp", "apply", f"ref@{k}", cwd=p)
    out = run("dvc", "exp", "run", "-n", "branch", cwd=p).stdout
    assert f"Resuming from model.pt (ref@{k}): {k} steps done" in out  # global step k: k steps done
    branch = checkpoint_refs(p, base, "branch")
    assert sorted(branch) == [LAST]
    assert meta(p, branch[LAST])["parent"] == refs[k]
    a, b = payload(p, branch[LAST]), payload(p, refs[LAST])
    assert same(exact_state(a), exact_state(b))
    assert meta(p, branch[LAST])["metrics"]["eval_accuracy"] == meta(p, refs[LAST])["metrics"]["eval_accuracy"]
    chains = {c["experiment"]: c for c in json.loads(run("expckpt", "show", "--json", cwd=p).stdout)}
    assert chains["branch"]["resumed_from"] == {"commit": refs[k], "name": f"ref@{k}"}


@pytest.mark.slow
def test_sigkill_then_resume_ends_bitwise_equal(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    run("expckpt", "reset", cwd=p)
    output = run_and_kill(p, base, "killed", after_step=SAVES[0])
    killed = checkpoint_refs(p, base, "killed")
    assert SAVES[0] <= max(killed) < LAST, output
    for step, commit in killed.items():
        assert payload(p, commit)["step"] == step
    last = max(killed)
    out = run("dvc", "exp", "run", "-n", "resumed", cwd=p).stdout
    assert f"Resuming from model.pt (killed@{last}): {last} steps done" in out, out
    resumed = checkpoint_refs(p, base, "resumed")
    chain = lineage(p, resumed[LAST])
    assert sorted(chain) == SAVES and chain[last] == killed[last]
    a, b = payload(p, resumed[LAST]), payload(p, refs[LAST])
    assert same(exact_state(a), exact_state(b))
    assert any(not torch.equal(a["model"][k], payload(p, refs[SAVES[-2]])["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_verify_all_passes(proj: dict[str, Any]) -> None:
    result = run("expckpt", "verify", "--all", cwd=proj["project"])
    assert result.returncode == 0, result.stdout + result.stderr
