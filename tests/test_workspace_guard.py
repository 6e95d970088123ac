"""The workspace checkpoint file belongs to expckpt during a run (issues #9.14 and #14.2).

``dvc exp apply`` during a run, or the tutorial's own ``torch.save(..., "model.pt")``, changes
the file under training: the next step stops with one line, and the end of the run leaves the
last checkpoint's file and dvc.lock in the workspace, so DVC's final experiment commit holds
the right model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expckpt.faults import PAUSE_MESSAGE
from faultkit import Background, check_consistent, clone, dvc_env, locked_model, md5_of, run, set_param

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    project = clone(tmp_path_factory, tmp_path / "p")
    set_param(project, "epochs", 3)
    return project


def workspace_lock_md5(project: Path) -> str:
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "model.pt")


def test_dvc_exp_apply_after_the_last_step_is_undone_at_the_end(project: Path) -> None:
    bg = Background.start(["python", "train.py"], project,
                          dvc_env(project, "g", EXPCKPT_PAUSE_AT="after-note:2", EXPCKPT_PAUSE_SECONDS="8"))
    bg.wait_for(PAUSE_MESSAGE)
    run("dvc", "exp", "apply", "g@0", cwd=project)
    assert bg.wait(120) == 0, bg.text()

    refs = check_consistent(project)
    last_md5, _ = locked_model(project, refs["g@2"].commit)
    assert md5_of(project / "model.pt") == last_md5 and workspace_lock_md5(project) == last_md5
    assert "model.pt was changed during the run; put back g@2's" in bg.text()


def test_a_change_during_training_stops_at_the_next_step_in_one_line(project: Path) -> None:
    bg = Background.start(["python", "train.py"], project,
                          dvc_env(project, "h", EXPCKPT_PAUSE_AT="after-note:0", EXPCKPT_PAUSE_SECONDS="8"))
    bg.wait_for(PAUSE_MESSAGE)
    (project / "model.pt").unlink()
    (project / "model.pt").write_bytes(b"written by the user's own torch.save")
    assert bg.wait(120) == 1
    errors = [line for name, line in bg.lines if name == "err" and line and "error" in line]
    assert errors == ["train.py: error: model.pt was changed by something other than expckpt since h@0 (your own"
                      " torch.save(..., 'model.pt')? a `dvc exp apply` during the run?); expckpt writes that file"
                      " itself: save anything else to another path, then run again"]
    refs = check_consistent(project)
    assert sorted(refs) == ["h@0"]
    assert md5_of(project / "model.pt") == locked_model(project, refs["h@0"].commit)[0]
