"""init_from and pauses through a framework front end (``StepLog``, as the Lightning and HF adapters
use it in one process): built once in the core, so a front end gets both without code of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expckpt.train.checkpointer import Checkpointer
from expckpt.integrations.loop import StepLog
from expckpt.train.pause import TrainingPaused, request_stop
from inprocess import dvc_env, new_repo, new_state, refs, train, train_step
from oracle import git


def meta(project: Path, commit: str) -> dict:
    message = git(project, "show", "-s", "--format=%B", commit)
    return json.loads(next(line for line in message.splitlines() if line.startswith("expckpt-meta: "))[14:])


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    train(project, "src", 2)
    return project


def test_a_front_end_starts_a_trial_and_pauses_at_a_step_boundary(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in dvc_env(repo, "ft").items():
        monkeypatch.setenv(key, value)
    state = new_state(seed=5)
    steps = StepLog(Checkpointer.from_env("model.pt", {"init_from": "src@1"}), state)
    assert steps.restore() is None and state.step == -1

    assert steps.completed(0, train_step(state, 0)).stop is None
    request_stop(repo, "ft")
    assert steps.completed(1, train_step(state, 1)).stop == "paused (expckpt stop)", "the pause stops training"
    with pytest.raises(TrainingPaused) as paused:
        steps.finish()
    assert paused.value.code == 75

    found = refs(repo)
    assert sorted(n for n in found if n.startswith("ft@")) == ["ft@0", "ft@1"]
    assert meta(repo, found["ft@1"])["paused"] is True
    assert meta(repo, found["ft@1"])["initialized_from"] == {"exp": "src", "step": 1, "commit": found["src@1"]}
