"""PyTorch Lightning through the real ``dvc exp run`` of ``examples/lightning``.

One project per module (6 epochs, keep_last 3 + the best by val_acc); the tests run in order:
a first run (checkpoints, metrics, retention), apply a checkpoint and branch off it (exact
resume, lineage), SIGKILL and resume (bitwise equal to the uninterrupted run), verify.
"""

from __future__ import annotations

import json
import re
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

EPOCHS = 6
CHECKPOINT = {"every": 1, "keep_last": 3, "keep_best": 1, "monitor": "val_acc", "mode": "max"}


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    project = make_example_project(
        tmp_path_factory.mktemp("lightning") / "p", "lightning", epochs=EPOCHS, checkpoint=CHECKPOINT
    )
    base = baseline(project)
    out = run("dvc", "exp", "run", "-n", "ref", cwd=project).stdout
    return {"project": project, "base": base, "out": out}


def test_config_from_model_checkpoint_maps_retention() -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from expckpt.policy.config import CheckpointConfig
    from expckpt.integrations.lightning import config_from_model_checkpoint

    best = config_from_model_checkpoint(ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2, every_n_epochs=3))
    assert best == {"every": 3, "monitor": "val_loss", "mode": "min", "keep_best": 2, "keep_last": 1}
    assert config_from_model_checkpoint(ModelCheckpoint(save_top_k=-1))["keep_last"] is None
    assert config_from_model_checkpoint(ModelCheckpoint())["keep_last"] == 1
    CheckpointConfig.from_params(best)  # a valid section


@pytest.mark.slow
def test_each_epoch_is_a_checkpoint_experiment_with_metrics_and_retention(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    history = [
        float(row.split("\t")[1])
        for row in run(
            "git", "show", f"{refs[EPOCHS - 1]}:dvclive/plots/metrics/val_acc.tsv", cwd=p
        ).stdout.splitlines()[1:]
    ]
    assert len(history) == EPOCHS
    best = {s for s in range(EPOCHS) if history[s] == max(history)}
    assert {3, 4, 5} <= set(refs) and len(refs) <= 4, proj["out"]  # keep_last 3 and the best by val_acc
    assert set(refs) - {3, 4, 5} <= best and set(refs) & best
    for step in range(EPOCHS):
        assert f"Checkpoint experiment 'ref@{step}'" in proj["out"]
    for step, commit in refs.items():
        record = meta(p, commit)
        assert (record["exp"], record["step"]) == ("ref", step)
        metrics = show_json(p, commit, "dvclive/metrics.json")
        assert metrics["step"] == step
        assert record["metrics"]["val_acc"] == pytest.approx(metrics["val_acc"]) == pytest.approx(history[step])
        assert {"train_loss", "val_loss"} <= record["metrics"].keys()
        state = payload(p, commit)
        assert state["step"] == step
        lightning = state.get("lightning") or state["scaler"]  # Lightning's own checkpoint dict
        assert lightning["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == step + 1
        if step > 0:
            assert record["parent"] is not None and meta(p, record["parent"])["step"] == step - 1
    assert not (p / "lightning_logs").exists()  # no default ModelCheckpoint beside ours


@pytest.mark.slow
def test_apply_a_checkpoint_and_run_branches_with_exact_resume(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    run("dvc", "exp", "apply", "ref@3", cwd=p)
    out = run("dvc", "exp", "run", "-n", "branch", cwd=p).stdout
    assert "Resuming from model.pt (ref@3): 4 steps done" in out
    branch = checkpoint_refs(p, base, "branch")
    assert sorted(branch) == [4, 5]
    assert meta(p, branch[4])["parent"] == refs[3]
    assert same(training_state(payload(p, branch[5])), training_state(payload(p, refs[5])))
    assert meta(p, branch[5])["metrics"] == meta(p, refs[5])["metrics"]
    chains = {c["experiment"]: c for c in json.loads(run("expckpt", "show", "--json", cwd=p).stdout)}
    assert chains["branch"]["resumed_from"] == {"commit": refs[3], "name": "ref@3"}


@pytest.mark.slow
def test_sigkill_then_resume_ends_bitwise_equal(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    run("expckpt", "reset", cwd=p)
    output = run_and_kill(p, base, "killed", after_step=1)
    killed = checkpoint_refs(p, base, "killed")
    assert 1 <= max(killed) < EPOCHS - 1, output
    for step, commit in killed.items():
        assert payload(p, commit)["step"] == step  # complete: its object is in the cache and loads
    last = max(killed)
    out = run("dvc", "exp", "run", "-n", "resumed", cwd=p).stdout
    assert f"Resuming from model.pt (killed@{last}): {last + 1} steps done" in out, out
    resumed = checkpoint_refs(p, base, "resumed")
    chain = lineage(p, resumed[EPOCHS - 1])
    assert sorted(chain) == list(range(EPOCHS)) and chain[last] == killed[last]
    final = payload(p, resumed[EPOCHS - 1])
    assert same(training_state(final), training_state(payload(p, refs[EPOCHS - 1])))
    assert any(not torch.equal(final["model"][k], payload(p, refs[3])["model"][k]) for k in final["model"])


@pytest.mark.slow
def test_verify_all_passes(proj: dict[str, Any]) -> None:
    result = run("expckpt", "verify", "--all", cwd=proj["project"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ddp_under_torchrun_publishes_once_and_resumes_exactly(tmp_path: Path) -> None:
    """The same callback under ``torchrun --nproc_per_node 2`` (Lightning's DDP on CPU, gloo)."""
    p = make_example_project(
        tmp_path / "p", "lightning", epochs=3, devices=2, checkpoint={"every": 1, "keep_last": None}
    )
    dvc_yaml = (
        (p / "dvc.yaml")
        .read_text()
        .replace("cmd: python train.py", "cmd: torchrun --standalone --nproc_per_node 2 train.py")
    )
    (p / "dvc.yaml").write_text(dvc_yaml)
    run("git", "commit", "-qam", "DDP", cwd=p)
    base = baseline(p)
    out = run("dvc", "exp", "run", "-n", "ddp", cwd=p).stdout
    assert re.findall(r"^Checkpoint experiment '([^']+)'", out, re.M) == ["ddp@0", "ddp@1", "ddp@2"]
    refs = checkpoint_refs(p, base, "ddp")
    assert len(payload(p, refs[2])["extras"]["_expckpt_rank_rng"]) == 2
    run("dvc", "exp", "apply", "ddp@0", cwd=p)
    out = run("dvc", "exp", "run", "-n", "again", cwd=p).stdout
    assert out.count("Resuming from model.pt (ddp@0): 1 steps done") == 1, out  # said by rank 0 only
    again = checkpoint_refs(p, base, "again")
    assert sorted(again) == [1, 2] and meta(p, again[1])["parent"] == refs[0]
    assert same(training_state(payload(p, again[2])), training_state(payload(p, refs[2])))


def test_a_model_checkpoint_of_your_own_coexists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside ``dvc exp run``: both write their files; its state rides in ours; its settings
    become the retention when no ``checkpoint:`` section is given."""
    import importlib.util

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from conftest import REPO
    from expckpt.integrations.lightning import ExpCkptCallback

    spec = importlib.util.spec_from_file_location("lightning_example", REPO / "examples" / "lightning" / "train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    pl.seed_everything(1, verbose=False)
    theirs = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val_acc", mode="max", save_top_k=1)
    ours = ExpCkptCallback("model.pt")
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ours, theirs],
    )
    trainer.fit(example.DigitsMLP(0.01), *example.digits_loaders(64))
    assert len(list((tmp_path / "ckpts").glob("*.ckpt"))) == 1
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    lightning = state.get("lightning") or state["scaler"]
    (key,) = [k for k in lightning["callbacks"] if k.startswith("ModelCheckpoint")]
    assert lightning["callbacks"][key]["best_model_path"].endswith(".ckpt")
    assert ours._config(trainer) == {"every": 1, "monitor": "val_acc", "mode": "max", "keep_best": 1, "keep_last": 1}
