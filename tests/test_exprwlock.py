"""A second ``dvc exp run`` in a workspace where one trains (issue 21 item 2): DVC refuses it at
once, naming the training process, and the first run ends as if it had never been tried."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from expckpt.store.exprwlock import hold_workspace
from expckpt.faults import PAUSE_MESSAGE
from expckpt.store.project import Project
from faultkit import Background, clone, head, run
from oracle import check_consistent, steps


@pytest.mark.slow
def test_second_dvc_exp_run_is_refused_and_the_first_ends_rc_0(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    project = clone(tmp_path_factory, tmp_path / "p")
    base = head(project)
    first = Background.start(
        ["dvc", "exp", "run", "-n", "first"],
        project,
        {"PYTHONUNBUFFERED": "1", "EXPCKPT_PAUSE_AT": "after-note:1", "EXPCKPT_PAUSE_SECONDS": "20"},
    )
    try:
        first.wait_for(PAUSE_MESSAGE, timeout=300)
        params = (project / "params.yaml").read_bytes()

        second = run("dvc", "exp", "run", "-n", "second", "-S", "lr=0.02", cwd=project, check=False, timeout=120)

        assert second.returncode != 0
        assert "'workspace' is busy" in second.stderr, second.stderr
        # the entry names the training process of the first run
        assert re.search(r"\(PID (\d+)\): dvc exp run -n first \(training: train.py, pid \1\)", second.stderr)
        assert (project / "params.yaml").read_bytes() == params, "the refused run must not touch the workspace"
    finally:
        code = first.wait(timeout=600)

    assert code == 0, first.text()
    assert steps(project, "first") == [0, 1, 2]
    final = f"refs/exps/{base[:2]}/{base[2:]}/first"
    assert yaml.safe_load(run("git", "show", f"{final}:params.yaml", cwd=project).stdout)["lr"] == 0.003
    assert steps(project, "second") == []
    check_consistent(project)


def dvc_queue_put(project: Path) -> None:
    """What ``dvc exp run`` does first (``WorkspaceQueue.put``): DVC's own rwlock, ``workspace`` for writing."""
    from dvc.fs import localfs
    from dvc.rwlock import rwlock

    with rwlock(
        str(project / ".dvc" / "tmp" / "exps"), localfs, "dvc exp run", [], ["workspace", "refs/exps/stash"], False
    ):
        pass


def test_training_holds_the_workspace_against_dvc_exp_run_only_until_it_ends(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from dvc.lock import LockError

    root = clone(tmp_path_factory, tmp_path / "p")
    release = hold_workspace(Project(root=root, workspace=root), "mine")
    with pytest.raises(
        LockError, match=rf"\(PID {os.getpid()}\): dvc exp run -n mine \(training: \S+, pid {os.getpid()}\)"
    ):
        dvc_queue_put(root)
    release()
    dvc_queue_put(root)  # released

    copy = tmp_path / "temp-copy"  # a --temp run trains in a copy: the user's workspace stays free
    copy.mkdir()
    release = hold_workspace(Project(root=root, workspace=copy), "queued")
    dvc_queue_put(root)
    release()
