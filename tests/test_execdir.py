"""Git's housekeeping during ``dvc exp run`` (issue 21 item 1): ``git gc`` packs DVC's executor
refs and removes the empty ``refs/exps/exec/``; DVC then failed at the end of the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expckpt.store.execdir import KEEP_FILE, keep_exec_dir
from faultkit import Background, clone, head, run
from oracle import check_consistent, steps


def test_keep_file_survives_pack_refs_and_is_no_ref(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    run("git", "init", "-q", str(repo), cwd=tmp_path)
    run("git", "commit", "-q", "--allow-empty", "-m", "base", cwd=repo)
    sha = run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    run("git", "update-ref", "refs/exps/exec/EXEC_BASELINE", sha, cwd=repo)

    keep_exec_dir(repo / ".git")
    run("git", "pack-refs", "--all", "--prune", cwd=repo)

    exec_dir = repo / ".git" / "refs" / "exps" / "exec"
    assert sorted(os.listdir(exec_dir)) == [KEEP_FILE]
    listed = run("git", "for-each-ref", "--format=%(refname)", cwd=repo)
    assert listed.stdout.split() == ["refs/exps/exec/EXEC_BASELINE", "refs/heads/main"]
    assert listed.stderr == ""


@pytest.mark.slow
def test_git_gc_during_dvc_exp_run_leaves_the_run_rc_0(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    project = clone(tmp_path_factory, tmp_path / "p")
    base = head(project)
    bg = Background.start(
        ["dvc", "exp", "run", "-n", "housekeeping", "-S", "epochs=4"], project, {"PYTHONUNBUFFERED": "1"}
    )
    try:
        bg.wait_for("Checkpoint experiment 'housekeeping@0'", timeout=300)
        run("git", "gc", "-q", cwd=project)  # as Git's scheduled maintenance would, mid-run
        assert not list((project / ".git" / "refs" / "exps" / "exec").glob("EXEC_*")), "gc packed DVC's refs"
    finally:
        code = bg.wait(timeout=600)

    assert code == 0, bg.text()
    assert "EXEC_BRANCH" not in bg.text()
    assert steps(project, "housekeeping") == [0, 1, 2, 3]
    final = run("git", "rev-parse", "--verify", "-q", f"refs/exps/{base[:2]}/{base[2:]}/housekeeping", cwd=project)
    assert final.stdout.strip(), "DVC's own final experiment exists"
    check_consistent(project)
