"""gittrees against real repositories: history walks, peeling, untrusted objects, no git executable."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import run
from expckpt.errors import ProjectError
from expckpt.store.gitstore import GitStore

PACKAGE = Path(__file__).resolve().parent.parent / "expckpt"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    (path / "dir").mkdir(parents=True)
    run("git", "init", "-q", cwd=path)
    (path / "a.txt").write_text("a\n")
    (path / "dir" / "b.txt").write_text("b\n")
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "first", cwd=path)
    (path / "a.txt").write_text("a2\n")
    run("git", "commit", "-qam", "second", cwd=path)
    return path


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    if stdin is None:
        return run("git", *args, cwd=repo).stdout.strip()
    return subprocess.run(
        ["git", *args], cwd=repo, input=stdin, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_commit_trees_walks_history_from_commits_and_tags(repo: Path) -> None:
    store = GitStore.open(repo)
    second, first = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD~1")
    side = store.write_commit(store.commit_tree(first), [first], "side\n")
    run("git", "tag", "-a", "-m", "t", "v1", side, cwd=repo)
    tag = git(repo, "rev-parse", "refs/tags/v1")
    assert tag != side

    trees = store.commit_trees([tag, second])

    assert trees == {c: git(repo, "rev-parse", f"{c}^{{tree}}") for c in (first, second, side)}
    assert store.commit_trees([]) == {}
    with pytest.raises(ProjectError, match="commit '0123456789ab' is missing from this repository"):
        store.commit_trees(["0123456789abcdef0123456789abcdef01234567"])


def test_commit_trees_reads_headers_only_and_skips_what_is_not_a_commit(repo: Path) -> None:
    """A message line ``parent <sha>`` is data, not a parent; a tag naming a blob has no history;
    a missing parent (a shallow clone's edge) ends the walk there."""
    store = GitStore.open(repo)
    first = git(repo, "rev-parse", "HEAD~1")
    tree = store.commit_tree(first)
    forged = store.write_commit(tree, [], f"hello\n\nparent {first}\n")
    blob = git(repo, "hash-object", "-w", "--stdin", stdin="x\n")
    ghost = "f" * 40
    orphan = store.write_commit(tree, [ghost], "edge\n")  # its parent is not in this repository

    assert store.commit_trees([forged]) == {forged: tree}
    assert store.commit_trees([blob]) == {}
    assert store.commit_trees([orphan]) == {orphan: tree}
    assert store.missing_objects([ghost, blob, first, "not-a-sha"]) == {ghost}
    assert [store.has_commit(s) for s in (first, tree, blob, ghost, "HEAD")] == [True, False, False, False, False]


def test_peel_follows_a_tag_chain_and_tips_report_the_end(repo: Path) -> None:
    store = GitStore.open(repo)
    head = git(repo, "rev-parse", "HEAD")
    run("git", "tag", "-a", "-m", "inner", "inner", head, cwd=repo)
    inner = git(repo, "rev-parse", "refs/tags/inner")
    outer = git(repo, "mktag", stdin=f"object {inner}\ntype tag\ntag outer\ntagger T <t@x> 0 +0000\n\nouter\n")
    run("git", "update-ref", "refs/tags/outer", outer, cwd=repo)

    assert store.peel(outer) == head and store.peel(head) == head
    assert store.branch_and_tag_tips()["refs/tags/outer"] == head


def test_refs_holding_garbage_are_skipped_like_git_does(repo: Path) -> None:
    store = GitStore.open(repo)
    head = git(repo, "rev-parse", "HEAD")
    store.create_ref("refs/exps/ab/cdef/ok@1", head)
    bad = repo / ".git" / "refs" / "exps" / "ab" / "cdef" / "bad@1"
    bad.write_bytes(b"\x1b[2Jnot a sha at all, but long enough to be read as one\n")
    (bad.parent / "loop@1").write_bytes(b"ref: refs/exps/ab/cdef/loop@1\n")
    (bad.parent / "dangling@1").write_bytes(b"ref: refs/exps/nowhere\n")
    (bad.parent / "sym@1").write_bytes(b"ref: refs/exps/ab/cdef/ok@1\n")

    assert store.ref_targets("refs/exps/") == {"refs/exps/ab/cdef/ok@1": head, "refs/exps/ab/cdef/sym@1": head}
    assert [e.ref for e in store.list_refs("refs/exps/")] == ["refs/exps/ab/cdef/ok@1", "refs/exps/ab/cdef/sym@1"]
    assert "refs/heads/main" in store.ref_targets("") or "refs/heads/master" in store.ref_targets("")


def test_list_refs_reads_time_and_message_from_the_raw_object(repo: Path) -> None:
    store = GitStore.open(repo)
    tree = store.commit_tree(git(repo, "rev-parse", "HEAD"))
    raw = (
        f"tree {tree}\nauthor A <a@x> 1700000000 +0000\ncommitter C <c@x> 1700000123 +0000\n\n"
        "first line\n\ncommitter X <x@x> 42 +0000\n"
    )
    odd = git(repo, "hash-object", "-t", "commit", "-w", "--stdin", stdin=raw)
    run("git", "update-ref", "refs/exps/ab/cdef/odd@1", odd, cwd=repo)
    blob = git(repo, "hash-object", "-w", "--stdin", stdin="just data\n")
    run("git", "update-ref", "refs/exps/ab/cdef/blob@1", blob, cwd=repo)

    entries = {e.ref.rpartition("/")[2]: e for e in store.list_refs("refs/exps/")}

    assert (entries["odd@1"].time, entries["odd@1"].message) == (
        1700000123,
        "first line\n\ncommitter X <x@x> 42 +0000\n",
    )
    assert (entries["blob@1"].time, entries["blob@1"].message) == (0, "")


def test_read_file_and_list_tree_of_missing_things_are_empty(repo: Path) -> None:
    store = GitStore.open(repo)
    head = git(repo, "rev-parse", "HEAD")
    assert store.read_file(head, "dir/b.txt") == b"b\n"
    assert store.read_file(head, "dir") is None and store.read_file(head, "a.txt/x") is None
    assert store.read_file("0" * 40, "a.txt") is None
    assert store.list_tree(head, "") == [] and store.list_tree(head, "a.txt") == []
    assert [(e.path, e.data) for e in store.list_tree(head, "dir/")] == [("dir/b.txt", b"b\n")]


def test_repository_reads_and_writes_need_no_git_executable(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the workspace and the network run ``git``; refs, objects, history and config do not."""
    run("git", "remote", "add", "origin", str(tmp_path / "elsewhere"), cwd=repo)
    store = GitStore.open(repo)
    head, first = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD~1")
    run("git", "tag", "-a", "-m", "t", "v1", head, cwd=repo)
    store.create_ref("refs/exps/ab/cdef/tut@1", head)
    run("git", "pack-refs", "--all", cwd=repo)
    empty = tmp_path / "no-git-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    tree = store.tree_with_files(store.commit_tree(head), {"x.txt": b"x\n"})
    commit = store.write_commit(tree, [head], "c\n")
    store.create_ref("refs/exps/ab/cdef/tut@2", commit)
    store.set_ref("refs/exps/ab/cdef/tut@2", head, commit)
    store.delete_ref("refs/exps/ab/cdef/tut@1", head)
    assert [e.ref for e in store.list_refs("refs/exps/")] == ["refs/exps/ab/cdef/tut@2"]
    assert store.branch_and_tag_tips()["refs/tags/v1"] == head
    assert set(store.commit_trees([commit])) == {commit, head, first}
    assert store.remotes() == ["origin"]
    assert store.missing_objects([commit]) == set()


def test_only_gitstore_runs_the_git_executable() -> None:
    """The documented places: the store (workspace snapshot, network) and the doctor's throwaway copy."""
    starts_git = re.compile(r"""\[\s*["']git["']""")
    found = sorted(p.name for p in PACKAGE.rglob("*.py") if starts_git.search(p.read_text()))
    assert found == ["doctor_run.py", "gitstore.py"]
