"""cloudgc: ``expckpt gc --cloud`` removes from the DVC remote only what expckpt wrote and nothing
kept here or on the Git remote needs (a real local DVC remote, checkpoints written in process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run
from expckpt.store.cache import DvcCache
from expckpt.ops.cloudgc import execute_cloud_gc, plan_cloud_gc
from expckpt.errors import ProjectError
from expckpt.store.gitstore import GitStore
from expckpt.publish.remote import upload_objects
from inprocess import new_repo, train
from oracle import check_consistent, locked_model


def remote_object(remote: Path, md5: str) -> Path:
    return remote / "files" / "md5" / md5[:2] / md5[2:]


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    train(project, "run", 3)
    run("dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=project)
    cache = DvcCache.for_project(project, project / ".git")
    upload_objects(cache, project, "store", set(cache.written_objects()))
    return project


def test_only_objects_of_removed_checkpoints_that_expckpt_wrote_are_planned_and_deleted(
    repo: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    store, cache = GitStore.open(repo), DvcCache.for_project(repo, repo / ".git")
    refs = check_consistent(repo)
    md5 = {name: locked_model(repo, refs[name].commit) for name in refs}
    foreign = remote_object(remote, "f" * 32)  # uploaded by someone else (plain dvc push): never a candidate
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_bytes(b"someone's data")
    assert all(remote_object(remote, m).is_file() for m, _ in md5.values())

    gone_refs = {refs[n].ref for n in ("run@0", "run@1")}
    plan = plan_cloud_gc(store, cache, repo, without=gone_refs)
    assert (plan.remote, plan.git_remote, plan.remote_tips) == ("store", None, [])
    assert plan.objects == {md5["run@0"][0]: md5["run@0"][1], md5["run@1"][0]: md5["run@1"][1]}
    assert plan.bytes == md5["run@0"][1] + md5["run@1"][1]

    assert execute_cloud_gc(plan, store, repo) == {}, "the refs are still there: nothing goes"
    assert all(remote_object(remote, m).is_file() for m, _ in md5.values())

    for name in ("run@0", "run@1"):
        store.delete_ref(refs[name].ref, refs[name].commit)
    gone = execute_cloud_gc(plan, store, repo)
    assert gone == plan.objects
    assert not remote_object(remote, md5["run@0"][0]).exists() and not remote_object(remote, md5["run@1"][0]).exists()
    assert remote_object(remote, md5["run@2"][0]).is_file() and foreign.is_file()


def test_a_checkpoint_on_the_git_remote_keeps_its_objects(repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "origin.git"
    run("git", "init", "-q", "--bare", str(bare), cwd=tmp_path)
    run("git", "remote", "add", "origin", str(bare), cwd=repo)
    refs = check_consistent(repo)
    run("git", "push", "-q", "origin", f"{refs['run@0'].ref}:{refs['run@0'].ref}", cwd=repo)
    store, cache = GitStore.open(repo), DvcCache.for_project(repo, repo / ".git")
    plan = plan_cloud_gc(store, cache, repo, without={refs[n].ref for n in ("run@0", "run@1")})
    assert plan.git_remote == "origin" and plan.remote_tips == [refs["run@0"].commit]
    assert plan.objects == {locked_model(repo, refs["run@1"].commit)[0]: locked_model(repo, refs["run@1"].commit)[1]}


def test_a_git_remote_with_commits_missing_here_removes_nothing(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run("git", "clone", "-q", str(repo), str(other), cwd=tmp_path)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "theirs", cwd=other)
    run("git", "branch", "-q", "feature", cwd=other)
    bare = tmp_path / "origin.git"
    run("git", "clone", "-q", "--bare", str(other), str(bare), cwd=tmp_path)
    run("git", "remote", "add", "origin", str(bare), cwd=repo)
    refs = check_consistent(repo)
    with pytest.raises(ProjectError) as info:
        plan_cloud_gc(GitStore.open(repo), DvcCache.for_project(repo, repo / ".git"), repo, without={refs["run@0"].ref})
    message = str(info.value)
    assert message.startswith("Git remote 'origin' has commits this repository lacks (")
    assert "feature" in message and message.endswith(
        "their data may be on the DVC remote, so nothing was removed: fetch them first (`git fetch origin` and"
        " `git fetch origin 'refs/exps/*:refs/exps/*'`), then run again"
    )
