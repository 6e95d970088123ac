"""The workspace checkpoint file belongs to expckpt during a run (issues #9.14 and #14.2).

``dvc exp apply`` during a run, or the tutorial's own ``torch.save(..., "model.pt")``, changes
the file under training: the next step stops with one line, and the end of the run leaves the
last checkpoint's file and dvc.lock in the workspace, so DVC's final experiment commit holds
the right model. The first tests drive ``WorkspaceGuard`` through a ``Checkpointer`` in this
process (fast); the last ones run the real training script beside a real ``dvc exp apply``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expckpt.errors import CheckpointError
from expckpt.faults import PAUSE_MESSAGE
from faultkit import Background, check_consistent, clone, dvc_env, locked_model, md5_of, run, set_param
from inprocess import checkpointer, new_repo, new_state, train_step

CHANGED = (
    "model.pt was changed by something other than expckpt since {last} (your own torch.save(..., 'model.pt')?"
    " a `dvc exp apply` during the run?); expckpt writes that file itself: save anything else to another"
    " path, then run again"
)


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "r")
    monkeypatch.chdir(project)
    return project


def test_in_process_a_changed_checkpoint_file_stops_the_next_save_in_one_line(repo: Path) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "g")
    ckpt.restore(state)
    for step in range(2):
        ckpt.save(state, step, train_step(state, step))
    ckpt.wait()
    (repo / "model.pt").unlink()
    (repo / "model.pt").write_bytes(b"the user's own torch.save")
    with pytest.raises(CheckpointError) as info:
        ckpt.save(state, 2, train_step(state, 2))
    assert str(info.value) == CHANGED.format(last="g@1")
    found = check_consistent(repo)
    assert sorted(found) == ["g@0", "g@1"]  # nothing was published over the user's file
    ckpt.close(None)  # the failed run still leaves its last checkpoint in the workspace
    assert md5_of(repo / "model.pt") == locked_model(repo, found["g@1"].commit)[0]


def test_in_process_the_end_of_the_run_puts_the_last_checkpoint_back(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "h")
    ckpt.restore(state)
    for step in range(2):
        ckpt.save(state, step, train_step(state, step))
    ckpt.wait()
    (repo / "model.pt").unlink()
    (repo / "model.pt").write_bytes(b"a dvc exp apply of another checkpoint")
    ckpt.close(state)
    found = check_consistent(repo)
    assert md5_of(repo / "model.pt") == locked_model(repo, found["h@1"].commit)[0]
    assert "expckpt: warning: model.pt was changed during the run; put back h@1's" in capsys.readouterr().out


def test_in_process_an_untouched_workspace_is_neither_refused_nor_rewritten(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = new_state()
    ckpt = checkpointer(repo, "k")
    ckpt.restore(state)
    for step in range(3):
        ckpt.save(state, step, train_step(state, step))
    ckpt.wait()
    before = (repo / "model.pt").stat()
    ckpt.close(state)
    after = (repo / "model.pt").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert sorted(check_consistent(repo)) == ["k@0", "k@1", "k@2"]
    assert "changed during the run" not in capsys.readouterr().out


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    project = clone(tmp_path_factory, tmp_path / "p")
    set_param(project, "epochs", 3)
    return project


def workspace_lock_md5(project: Path) -> str:
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "model.pt")


@pytest.mark.slow
def test_dvc_exp_apply_after_the_last_step_is_undone_at_the_end(project: Path) -> None:
    bg = Background.start(
        ["python", "train.py"],
        project,
        dvc_env(project, "g", EXPCKPT_PAUSE_AT="after-note:2", EXPCKPT_PAUSE_SECONDS="8"),
    )
    bg.wait_for(PAUSE_MESSAGE)
    run("dvc", "exp", "apply", "g@0", cwd=project)
    assert bg.wait(120) == 0, bg.text()

    refs = check_consistent(project)
    last_md5, _ = locked_model(project, refs["g@2"].commit)
    assert md5_of(project / "model.pt") == last_md5 and workspace_lock_md5(project) == last_md5
    assert "model.pt was changed during the run; put back g@2's" in bg.text()


@pytest.mark.slow
def test_a_change_during_training_stops_at_the_next_step_in_one_line(project: Path) -> None:
    bg = Background.start(
        ["python", "train.py"],
        project,
        dvc_env(project, "h", EXPCKPT_PAUSE_AT="after-note:0", EXPCKPT_PAUSE_SECONDS="8"),
    )
    bg.wait_for(PAUSE_MESSAGE)
    (project / "model.pt").unlink()
    (project / "model.pt").write_bytes(b"written by the user's own torch.save")
    assert bg.wait(120) == 1
    errors = [line for name, line in bg.lines if name == "err" and line and "error" in line]
    assert errors == [
        "train.py: error: model.pt was changed by something other than expckpt since h@0 (your own"
        " torch.save(..., 'model.pt')? a `dvc exp apply` during the run?); expckpt writes that file"
        " itself: save anything else to another path, then run again"
    ]
    refs = check_consistent(project)
    assert sorted(refs) == ["h@0"]
    assert md5_of(project / "model.pt") == locked_model(project, refs["h@0"].commit)[0]
