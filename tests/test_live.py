"""``CheckpointLive`` in process: ``from_env``, ``steps`` and ``next_step`` in a temp directory.

Outside ``dvc exp run`` (no DVC variables: a plain directory) and inside it (a real temporary
Git + DVC repository with the variables set), with the tiny model of ``inprocess``. dvclive is
the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from expckpt import CheckpointLive, load_checkpoint
from inprocess import dvc_env, new_repo, new_state, refs, train_step
from oracle import check_consistent, git

PARAMS = {"checkpoint": {"every": 1}}


def run_live(
    total: int,
    *,
    seed: int = 0,
    params: dict | None = None,
    draws: dict[int, float] | None = None,
    reseed_after_restore: bool = False,
) -> tuple[CheckpointLive, list[int]]:
    """A training script's loop: log loss and acc, ``next_step()``; return the live and the steps run."""
    state = new_state(seed)
    trained = []
    with CheckpointLive.from_env(state, params or PARAMS) as live:
        if reseed_after_restore:
            torch.manual_seed(1234)  # a script that seeds after restoring: must not change a resume
        for step in live.steps(total):
            if draws is not None:
                draws[step] = torch.rand(1).item()  # the global RNG, as a data loader uses it
            metrics = train_step(state, step)
            live.log_metric("loss", metrics["loss"])
            live.log_metric("acc", metrics["acc"])
            live.next_step()
            trained.append(step)
    return live, trained


@pytest.fixture
def plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_steps_run_to_the_total_and_each_next_step_saves(plain: Path) -> None:
    live, trained = run_live(3)

    assert trained == [0, 1, 2] and live.resumed is None
    assert load_checkpoint(plain / "model.pt")["step"] == 2
    assert json.loads((plain / "dvclive" / "metrics.json").read_text())["step"] == 2
    assert not (plain / "dvc.yaml").exists(), "CheckpointLive writes no dvc.yaml of its own"


def test_a_new_run_resumes_after_the_restored_step_and_dvclive_goes_on(
    plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_live(3)

    again, trained = run_live(3)
    assert trained == [] and again.resumed is not None and again.resumed.step == 2
    assert "model.pt already has 3 steps (total 3); nothing to train" in capsys.readouterr().out

    more, trained = run_live(5)
    assert trained == [3, 4] and more.resumed is not None and more.resumed.step == 2
    assert json.loads((plain / "dvclive" / "metrics.json").read_text())["step"] == 4
    header, *rows = (plain / "dvclive" / "plots" / "metrics" / "acc.tsv").read_text().splitlines()
    column = header.split("\t").index("step")
    assert [row.split("\t")[column] for row in rows] == ["0", "1", "2", "3", "4"], "the history goes on"


def test_seeding_after_from_env_does_not_change_a_resumed_run(
    plain: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight: dict[int, float] = {}
    monkeypatch.chdir(tmp_path_factory.mktemp("straight"))
    run_live(4, draws=straight)

    monkeypatch.chdir(plain)
    run_live(2, draws={})
    resumed: dict[int, float] = {}
    run_live(4, draws=resumed, reseed_after_restore=True)

    assert resumed == {2: straight[2], 3: straight[3]}


def test_inside_dvc_exp_run_each_step_is_a_checkpoint_experiment(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    for key, value in dvc_env(repo, "live").items():
        monkeypatch.setenv(key, value)

    live, trained = run_live(3)

    found = check_consistent(repo)
    assert trained == [0, 1, 2] and sorted(found) == ["live@0", "live@1", "live@2"]
    for step in trained:
        metrics = json.loads(git(repo, "show", f"{found[f'live@{step}'].commit}:dvclive/metrics.json"))
        assert metrics["step"] == step
    assert live.checkpointer.last_record is not None and live.checkpointer.last_record.name == "live@2"
    assert refs(repo) == {name: ref.commit for name, ref in found.items()}


def test_a_stop_decision_ends_the_steps_after_saving(plain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = new_state()
    params = {"checkpoint": {"on_divergence": "stop", "divergence_steps": 2}}
    trained = []
    with CheckpointLive.from_env(state, params) as live:
        for step in live.steps(10):
            live.log_metric("loss", [1.0, 0.5, 0.6, 0.7, 0.8, 0.9][step])
            live.next_step()
            trained.append(step)

    assert trained == [0, 1, 2, 3]
    assert load_checkpoint(plain / "model.pt")["step"] == 3
    assert "stopping training at step 3" in capsys.readouterr().out
