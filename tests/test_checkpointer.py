"""``Checkpointer`` in process: save, restore, decisions and retention, without spawning training.

A real temporary Git + DVC repository and the variables ``dvc exp run`` sets, passed as ``env=``
to ``Checkpointer.from_env``; a tiny model trained by ``inprocess.train_step``. Each save is
checked the way the crash tests check one (``oracle``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from expckpt.train.checkpointer import Checkpointer, Decision
from expckpt.errors import ConfigError
from inprocess import checkpointer, dvc_env, new_repo, new_state, refs, train, train_step
from oracle import cache_object, check_consistent, git, locked_model, md5_of


def meta(project: Path, commit: str) -> dict:
    message = git(project, "show", "-s", "--format=%B", commit)
    return json.loads(next(line for line in message.splitlines() if line.startswith("expckpt-meta: "))[14:])


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    return project


def test_each_save_is_a_complete_checkpoint_experiment(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "run")
    assert ckpt.restore(state) is None, "nothing to resume in a new repository"

    decisions = [ckpt.save(state, step, train_step(state, step)) for step in range(3)]
    ckpt.close(state)

    assert decisions == [Decision(saved=True, stop=None)] * 3
    found = check_consistent(repo)
    assert sorted(found) == ["run@0", "run@1", "run@2"]
    assert [found[f"run@{n}"].commit[:7] for n in range(3)] == [
        line.split("(")[1][:7]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("Checkpoint experiment")
    ]
    assert md5_of(repo / "model.pt") == locked_model(repo, found["run@2"].commit)[0]
    # DVC's default cache.type (reflink,copy): the workspace file is not the cache object's inode
    assert (repo / "model.pt").stat().st_ino != cache_object(repo, md5_of(repo / "model.pt")).stat().st_ino
    assert (
        git(repo, "show", "-s", "--format=%P", found["run@1"].commit).strip() == git(repo, "rev-parse", "HEAD").strip()
    )
    assert ckpt.last_record is not None and ckpt.last_record.parent == found["run@1"].commit


def test_restore_puts_back_the_saved_state(repo: Path) -> None:
    _, trained = train(repo, "run", 2)
    state = new_state(seed=99)  # other weights, other optimizer state
    ckpt = checkpointer(repo, "next")

    resumed = ckpt.restore(state)

    assert resumed is not None and resumed.record is not None
    assert (resumed.step, resumed.record.name, state.step) == (1, "run@1", 1)
    for name, value in trained.model.state_dict().items():
        assert torch.equal(state.model.state_dict()[name], value), name
    saved = trained.optimizer.state_dict()["state"]
    for index, values in state.optimizer.state_dict()["state"].items():
        assert torch.equal(values["momentum_buffer"], saved[index]["momentum_buffer"])


def test_the_resumed_run_continues_the_chain_and_the_straight_run(repo: Path) -> None:
    train(repo, "part", 2)
    _resumed, state = train(repo, "rest", 4)

    found = refs(repo)
    assert sorted(found) == ["part@0", "part@1", "rest@2", "rest@3"]
    assert [meta(repo, found[n])["parent"] for n in ("part@1", "rest@2", "rest@3")] == [
        found["part@0"],
        found["part@1"],
        found["rest@2"],
    ]
    straight = new_state()
    for step in range(4):
        train_step(straight, step)
    assert torch.equal(state.model.weight, straight.model.weight), "resuming changed the result"


def test_every_n_steps_saves_on_schedule_and_close_saves_the_last_step(repo: Path) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "run", {"every": 2})
    ckpt.restore(state)

    decisions = [ckpt.save(state, step, train_step(state, step)).saved for step in range(5)]
    assert decisions == [False, True, False, True, False]
    assert sorted(refs(repo)) == ["run@1", "run@3"]

    ckpt.close(state)

    assert sorted(refs(repo)) == ["run@1", "run@3", "run@4"], "the final step is saved on close"
    check_consistent(repo)


def test_divergence_with_on_divergence_stop_saves_and_says_stop(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "run", {"on_divergence": "stop", "divergence_steps": 2})
    ckpt.restore(state)
    losses = [1.0, 0.5, 0.6, 0.7, 0.8]

    decisions = [ckpt.save(state, step, {"loss": loss}) for step, loss in enumerate(losses[:4])]

    assert [d.stop for d in decisions] == [None, None, None, "diverging"]
    assert all(d.saved for d in decisions)
    assert "run@3" in refs(repo), "the step that stops training is saved"
    assert "expckpt: stopping training at step 3 (diverging; checkpoint.on_divergence: stop)" in capsys.readouterr().out


def test_retention_drops_refs_the_keep_policy_no_longer_keeps(repo: Path) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "run", {"keep_last": 2, "keep_best": 1, "monitor": "acc"})
    ckpt.restore(state)
    accs = [0.2, 0.9, 0.3, 0.4, 0.5]

    for step, acc in enumerate(accs):
        ckpt.save(state, step, {"loss": 1.0 / (step + 1), "acc": acc})
    ckpt.close(state)

    assert sorted(refs(repo)) == ["run@1", "run@3", "run@4"], "the best (run@1) and the last 2"
    check_consistent(repo)


def test_outside_dvc_exp_run_the_file_is_saved_and_resumed_without_refs(repo: Path) -> None:
    state = new_state()
    ckpt = Checkpointer.from_env(config={}, env={})
    assert ckpt.wiring.committer is None and ckpt.path == repo / "model.pt"
    ckpt.restore(state)
    for step in range(2):
        ckpt.save(state, step, train_step(state, step))
    ckpt.close(state)

    again = new_state(seed=5)
    resumed = Checkpointer.from_env(config={}, env={}).restore(again)

    assert refs(repo) == {}
    assert resumed is not None and resumed.record is None and resumed.step == 1
    assert torch.equal(again.model.weight, state.model.weight)


def test_a_monitor_the_run_never_logs_is_refused_at_the_first_save(repo: Path) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "run", {"keep_best": 1, "monitor": "val_acc"})
    ckpt.restore(state)

    with pytest.raises(ConfigError, match="val_acc"):
        ckpt.save(state, 0, {"loss": 1.0, "acc": 0.5})
    assert refs(repo) == {}


def test_env_names_the_experiment_and_its_baseline(repo: Path) -> None:
    env = dvc_env(repo, "named")
    ckpt = Checkpointer.from_env(config={}, env=env)
    state = new_state()
    ckpt.restore(state)
    ckpt.save(state, 0, train_step(state, 0))
    ckpt.close(state)

    assert ckpt.wiring.committer is not None and ckpt.wiring.committer.run.baseline == env["DVC_EXP_BASELINE_REV"]
    assert list(refs(repo)) == ["named@0"]
    ref = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    assert ref == [f"refs/exps/{env['DVC_EXP_BASELINE_REV'][:2]}/{env['DVC_EXP_BASELINE_REV'][2:]}/named@0"]
