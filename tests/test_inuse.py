"""inuse: which cache objects DVC metafiles name, in kept commits and in the workspace, asked of
DVC itself on a real repository (checkpoints written in this process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expckpt.store.gitstore import GitStore
from expckpt.store.inuse import InUse
from inprocess import new_repo, train
from oracle import check_consistent, git, locked_model


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    train(project, "run", 3)
    return project


def test_each_checkpoint_commit_uses_exactly_the_model_its_dvc_lock_names(repo: Path) -> None:
    store = GitStore.open(repo)
    refs = check_consistent(repo)
    in_use = InUse(store, repo)
    try:
        for name in ("run@0", "run@1", "run@2"):
            commit = refs[name].commit
            assert in_use.of_commits({commit: store.commit_tree(commit)}) == {locked_model(repo, commit)[0]}, name
        both = {refs[n].commit: store.commit_tree(refs[n].commit) for n in ("run@0", "run@2")}
        assert in_use.of_commits(both) == {locked_model(repo, c)[0] for c in both}
        baseline = git(repo, "rev-parse", "HEAD").strip()
        assert in_use.of_commits({baseline: store.commit_tree(baseline)}) == set()  # nothing trained there yet
    finally:
        in_use.close()


def test_the_workspace_uses_what_its_dvc_lock_and_expckpts_notes_name(repo: Path) -> None:
    last = locked_model(repo, check_consistent(repo)["run@2"].commit)[0]
    in_use = InUse(GitStore.open(repo), repo)
    try:
        assert in_use.of_workspace(repo) == {last}
        # an untracked .dvc file in a subdirectory is a metafile too
        (repo / "data").mkdir()
        (repo / "data" / "raw.csv.dvc").write_text(
            "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 3\n  hash: md5\n  path: raw.csv\n"
        )
        assert InUse(GitStore.open(repo), repo).of_workspace(repo) == {last, "0123456789abcdef0123456789abcdef"}
    finally:
        in_use.close()


def test_a_metafile_dvc_cannot_read_keeps_every_md5_in_it(repo: Path) -> None:
    token_a, token_b = "a" * 32, "b" * 31 + "c"
    (repo / "dvc.lock").write_text(f"stages: [this is not {token_a} a lock\n  {token_b}\n  {'d' * 33}\n")
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "-qm", "broken lock")
    store = GitStore.open(repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    in_use = InUse(store, repo)
    try:
        assert in_use.of_commits({head: store.commit_tree(head)}) == {token_a, token_b}  # 33 hex digits: not an md5
    finally:
        in_use.close()


def test_answers_are_kept_on_disk_per_dvc_version_for_the_next_run(repo: Path) -> None:
    store = GitStore.open(repo)
    commit = check_consistent(repo)["run@1"].commit
    expected = {locked_model(repo, commit)[0]}
    first = InUse(store, repo)
    assert first.of_commits({commit: store.commit_tree(commit)}) == expected
    first.save()
    first.close()
    kept = json.loads((repo / ".git" / "expckpt" / "in-use.json").read_text())
    assert kept["v"] == 1 and kept["dvc"] and any(sorted(values) == sorted(expected) for _, values in kept["units"])
    again = InUse(GitStore.open(repo), repo)
    try:
        assert again.of_commits({commit: again.store.commit_tree(commit)}) == expected
        assert again._repos == {}, "answered from the kept answers: DVC's Repo was not opened"
    finally:
        again.close()
