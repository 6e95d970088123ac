"""Where checkpoints are pushed (``resolve_target``) and one pushed batch (``push_batch``), on real
Git + DVC repositories with a bare Git remote and a local-directory DVC remote."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_project, run, train_in_exp_env
from expckpt.store.catalog import Catalog
from expckpt.errors import ProjectError
from expckpt.store.gitstore import GitStore
from expckpt.publish.remote import PushTarget, push_batch, resolve_target


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A Git + DVC repository with one commit, no remotes."""
    path = tmp_path / "repo"
    path.mkdir()
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    run("git", "commit", "-qm", "init", cwd=path)
    return path


def test_checkpoint_push_needs_that_git_remote(bare: Path) -> None:
    with pytest.raises(
        ProjectError,
        match=r"checkpoint\.push names Git remote 'origin', which this repository does not "
        r"have \(it has: none\); add it with `git remote add origin <url>`",
    ):
        resolve_target(GitStore.open(bare), bare, "origin", env={})


def test_checkpoint_push_needs_a_default_dvc_remote(bare: Path, tmp_path: Path) -> None:
    run("git", "remote", "add", "origin", str(tmp_path / "remote.git"), cwd=bare)
    with pytest.raises(ProjectError, match=r"pushing checkpoints needs a default DVC remote .*`dvc remote add -d "):
        resolve_target(GitStore.open(bare), bare, "origin", env={})
    run("dvc", "remote", "add", "store", str(tmp_path / "store"), cwd=bare)  # not the default: still refused
    with pytest.raises(ProjectError, match=r"needs a default DVC remote"):
        resolve_target(GitStore.open(bare), bare, "origin", env={})
    run("dvc", "remote", "default", "store", cwd=bare)
    assert resolve_target(GitStore.open(bare), bare, "origin", env={}) == (
        PushTarget(git_remote="origin", dvc_remote="store", source="checkpoint.push"),
        None,
    )


def test_dvc_exp_auto_push_convention(bare: Path, tmp_path: Path) -> None:
    store = GitStore.open(bare)
    run("dvc", "remote", "add", "-d", "store", str(tmp_path / "store"), cwd=bare)
    assert resolve_target(store, bare, None, env={}) == (None, None)
    assert resolve_target(store, bare, None, env={"DVC_EXP_AUTO_PUSH": "false"}) == (None, None)
    # DVC warns and goes on when the remote is missing; so does expckpt
    target, warning = resolve_target(store, bare, None, env={"DVC_EXP_AUTO_PUSH": "true"})
    assert target is None
    assert warning is not None and warning.startswith(
        "expckpt: warning: not pushing checkpoints (DVC_EXP_AUTO_PUSH is set): DVC_EXP_AUTO_PUSH names Git remote 'origin'"
    )
    run("git", "remote", "add", "team", str(tmp_path / "remote.git"), cwd=bare)
    env = {"DVC_EXP_AUTO_PUSH": "1", "DVC_EXP_GIT_REMOTE": "team"}
    assert resolve_target(store, bare, None, env=env) == (
        PushTarget(git_remote="team", dvc_remote="store", source="DVC_EXP_AUTO_PUSH"),
        None,
    )
    run("dvc", "config", "exp.auto_push", "true", cwd=bare)
    run("dvc", "config", "exp.git_remote", "team", cwd=bare)
    assert resolve_target(store, bare, None, env={})[0] == PushTarget(
        git_remote="team", dvc_remote="store", source="DVC_EXP_AUTO_PUSH"
    )
    assert resolve_target(store, bare, "team", env={"DVC_EXP_AUTO_PUSH": "false"})[0] is not None  # the key wins


@pytest.mark.slow
def test_push_batch_skips_dropped_checkpoints_and_sends_objects_before_refs(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", epochs=3, checkpoint={"every": 1, "keep_last": None})
    remote, objects = tmp_path / "remote.git", tmp_path / "store"
    run("git", "init", "-q", "--bare", str(remote), cwd=tmp_path)
    run("git", "remote", "add", "origin", str(remote), cwd=project)
    run("dvc", "remote", "add", "-d", "store", str(objects), cwd=project)
    train_in_exp_env(project, "tut")
    store = GitStore.open(project)
    records = {r.step: r for r in Catalog.load(store).records}
    assert sorted(records) == [0, 1, 2]
    store.delete_ref(records[0].ref.ref, records[0].commit)  # what retention does
    target = PushTarget(git_remote="origin", dvc_remote="store", source="checkpoint.push")
    pushed = push_batch(store, project, target, [(r.ref.ref, r.commit) for r in records.values()])
    assert pushed == [records[1].ref.ref, records[2].ref.ref]
    listed = run("git", "ls-remote", str(remote), cwd=tmp_path).stdout
    assert "tut@0" not in listed and f"{records[1].commit}\t{records[1].ref.ref}" in listed
    stored = {p.parent.name + p.name for p in (objects / "files" / "md5").glob("*/*")}
    assert {records[1].outs["model.pt"].md5, records[2].outs["model.pt"].md5} <= stored
    assert records[0].outs["model.pt"].md5 not in stored
