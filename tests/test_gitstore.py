"""GitStore against real repositories: trees, commits without an identity, CAS refs, snapshots."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run
from expckpt.errors import GitLockedError, ProjectError, RefConflictError
from expckpt.store.gitstore import GitStore, RefEntry

REF = "refs/exps/ab/cdef/tut@1"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    run("git", "init", "-q", cwd=path)
    files = {"a.txt": "a\n", "dir/b.txt": "b\n", "dir/sub/c.txt": "c\n", "dir/sub/d.txt": "d\n", "keep/e.txt": "e\n"}
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "baseline", cwd=path)
    return path


def head(path: Path) -> str:
    return run("git", "rev-parse", "HEAD", cwd=path).stdout.strip()


def ls_tree(path: Path, tree: str) -> dict[str, str]:
    """path -> content of every file in ``tree``, read with the git executable."""
    out = {}
    for line in run("git", "ls-tree", "-r", "-z", tree, cwd=path).stdout.split("\0"):
        if line:
            meta, name = line.split("\t", 1)
            mode, kind, sha = meta.split()
            assert (mode, kind) == ("100644", "blob")
            out[name] = run("git", "cat-file", "blob", sha, cwd=path).stdout
    return out


def stray_locks(repo: Path) -> list[Path]:
    """``.lock`` files left in the repository (expckpt's own flock files excepted)."""
    return [p for p in (repo / ".git").rglob("*.lock") if p.parent.name != "expckpt"]


def test_open_refuses_a_non_repository(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="is not a Git repository; run `git init && dvc init`"):
        GitStore.open(tmp_path)


def test_tree_with_files_over_a_base_tree(repo: Path) -> None:
    store = GitStore.open(repo)
    base = store.commit_tree(head(repo))
    tree = store.tree_with_files(
        base,
        {
            "a.txt": b"changed\n",
            "new/deep/nested/f.txt": b"f\n",
            "dir/sub/g.txt": b"g\n",
            "dir/b.txt": None,
            "dir/sub/c.txt": None,
            "keep/e.txt": None,  # the only file of keep/: the directory goes too
        },
    )
    assert ls_tree(repo, tree) == {
        "a.txt": "changed\n",
        "dir/sub/d.txt": "d\n",
        "dir/sub/g.txt": "g\n",
        "new/deep/nested/f.txt": "f\n",
    }
    run("git", "fsck", "--strict", "--no-dangling", cwd=repo)
    assert store.commit_tree(head(repo)) == base  # the base is untouched
    assert ls_tree(repo, store.tree_with_files(base, {})) == ls_tree(repo, base)


def test_write_commit_is_a_valid_git_commit(repo: Path) -> None:
    store = GitStore.open(repo)
    parent = head(repo)
    tree = store.tree_with_files(store.commit_tree(parent), {"dvc.lock": b"lock\n"})
    message = "dvc: commit experiment 123\n\nbody line\n"
    commit = store.write_commit(tree, [parent], message)
    assert store.has_commit(commit)
    assert run("git", "log", "-1", "--format=%P%n%T%n%an <%ae>", commit, cwd=repo).stdout.splitlines() == [
        parent,
        tree,
        "expckpt tests <tests@expckpt.invalid>",
    ]
    assert run("git", "cat-file", "commit", commit, cwd=repo).stdout.endswith("\n\n" + message)
    run("git", "fsck", "--strict", "--no-dangling", cwd=repo)


def test_write_commit_without_any_git_identity(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    monkeypatch.setenv("HOME", str(empty_home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(empty_home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "alice")
    # Plain git really has no identity here:
    assert run("git", "config", "user.email", cwd=repo, check=False).returncode == 1

    store = GitStore.open(repo)
    parent = head(repo)
    commit = store.write_commit(store.commit_tree(parent), [parent], "checkpoint\n")
    author = run("git", "log", "-1", "--format=%an <%ae>|%cn <%ce>", commit, cwd=repo).stdout.strip()
    expected = f"alice <alice@{socket.gethostname()}>"
    assert author == f"{expected}|{expected}"
    run("git", "fsck", "--strict", "--no-dangling", cwd=repo)


def test_identity_with_only_a_name_configured(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.delenv("LOGNAME", raising=False)
    run("git", "config", "user.name", "Alice Liddell", cwd=repo)
    assert GitStore.open(repo).identity() == f"Alice Liddell <alice@{socket.gethostname()}>".encode()


def test_has_commit(repo: Path) -> None:
    store = GitStore.open(repo)
    commit = head(repo)
    assert store.has_commit(commit)
    assert not store.has_commit(store.commit_tree(commit))  # a tree, not a commit
    assert not store.has_commit("0" * 40)


def test_set_ref_create_only_refuses_an_existing_ref(repo: Path) -> None:
    store = GitStore.open(repo)
    first = head(repo)
    second = store.write_commit(store.commit_tree(first), [first], "second\n")
    store.set_ref(REF, first, None)
    assert run("git", "rev-parse", REF, cwd=repo).stdout.strip() == first
    with pytest.raises(RefConflictError, match=r"tut@1 changed under us: expected it to be absent") as info:
        store.set_ref(REF, second, None)
    assert (info.value.ref, info.value.expected, info.value.actual) == (REF, None, first)
    assert store.get_ref(REF) == first
    with pytest.raises(RefConflictError):
        store.create_ref(REF, first)  # even to the same commit
    assert not Path(repo, ".git", REF + ".lock").exists()


def test_set_ref_replaces_only_the_expected_commit(repo: Path) -> None:
    store = GitStore.open(repo)
    a = head(repo)
    b = store.write_commit(store.commit_tree(a), [a], "b\n")
    c = store.write_commit(store.commit_tree(a), [b], "c\n")
    store.set_ref(REF, a, None)
    store.set_ref(REF, b, a)
    assert store.get_ref(REF) == b
    with pytest.raises(RefConflictError, match=f"expected it at {a[:7]}, but it is at {b[:7]}") as info:
        store.set_ref(REF, c, a)  # stale: someone moved it to b
    assert info.value.actual == b
    assert run("git", "rev-parse", REF, cwd=repo).stdout.strip() == b
    with pytest.raises(RefConflictError, match="but it is absent") as info:
        store.set_ref("refs/exps/ab/cdef/missing@1", c, a)
    assert info.value.actual is None
    assert store.get_ref("refs/exps/ab/cdef/missing@1") is None


def test_delete_ref_raises_when_the_ref_moved_or_is_gone(repo: Path) -> None:
    store = GitStore.open(repo)
    a = head(repo)
    b = store.write_commit(store.commit_tree(a), [a], "b\n")
    store.create_ref(REF, b)
    with pytest.raises(RefConflictError) as moved:
        store.delete_ref(REF, a)
    assert (moved.value.expected, moved.value.actual) == (a, b)
    assert store.get_ref(REF) == b
    store.delete_ref(REF, b)
    assert store.get_ref(REF) is None
    assert run("git", "show-ref", "--verify", REF, cwd=repo, check=False).returncode != 0
    with pytest.raises(RefConflictError) as gone:
        store.delete_ref(REF, b)
    assert gone.value.actual is None


def test_bad_ref_names_and_shas_are_refused(repo: Path) -> None:
    store = GitStore.open(repo)
    a = head(repo)
    for bad in ("refs/exps/../../HEAD", "HEAD", "refs/exps/ab/x y", "refs/exps/a..b"):
        with pytest.raises(RefConflictError, match="is not a valid Git ref name"):
            store.set_ref(bad, a, None)
    with pytest.raises(ValueError, match="not a 40-hex commit sha"):
        store.set_ref(REF, "HEAD", None)


def test_ref_updates_are_seen_by_git_and_vice_versa(repo: Path) -> None:
    store = GitStore.open(repo)
    a = head(repo)
    b = store.write_commit(store.commit_tree(a), [a], "b\n")
    run("git", "update-ref", REF, a, cwd=repo)
    store.set_ref(REF, b, a)
    run("git", "pack-refs", "--all", cwd=repo)  # packed refs are honoured too
    assert store.get_ref(REF) == b
    store.delete_ref(REF, b)
    assert run("git", "for-each-ref", "refs/exps", cwd=repo).stdout == ""
    run("git", "update-ref", REF, a, cwd=repo)
    run("git", "pack-refs", "--all", cwd=repo)
    with pytest.raises(RefConflictError):
        store.set_ref(REF, b, None)  # a packed ref exists too
    store.set_ref(REF, b, a)
    assert run("git", "rev-parse", REF, cwd=repo).stdout.strip() == b


def test_list_refs_returns_commits_times_and_messages(repo: Path) -> None:
    store = GitStore.open(repo)
    a = head(repo)
    messages = {
        "refs/exps/ab/cdef/tut@0": "dvc: commit experiment 1\n\nfirst body\n\nexpckpt-meta: {}\n",
        "refs/exps/ab/cdef/tut@1": "one line\n",
        "refs/exps/01/2345/other@3": "subject\n\n- with\n- list\n",
    }
    commits = {}
    for ref, message in messages.items():
        commits[ref] = store.write_commit(store.commit_tree(a), [a], message)
        store.create_ref(ref, commits[ref])
    store.create_ref("refs/heads/tut@5", a)

    entries = store.list_refs("refs/exps/")
    assert [e.ref for e in entries] == sorted(messages)
    for entry in entries:
        assert isinstance(entry, RefEntry)
        assert entry.commit == commits[entry.ref]
        assert entry.message == messages[entry.ref]
        timestamp = run("git", "log", "-1", "--format=%ct", entry.commit, cwd=repo).stdout.strip()
        assert entry.time == int(timestamp) > 0
    assert [e.ref for e in store.list_refs("refs/exps/ab/")] == ["refs/exps/ab/cdef/tut@0", "refs/exps/ab/cdef/tut@1"]
    assert store.list_refs("refs/nothing/") == []


def test_read_file_and_list_tree(repo: Path) -> None:
    store = GitStore.open(repo)
    commit = head(repo)
    assert store.read_file(commit, "a.txt") == b"a\n"
    assert store.read_file(commit, "dir/sub/c.txt") == b"c\n"
    assert store.read_file(commit, "dir/sub") is None  # a directory
    assert store.read_file(commit, "missing.txt") is None
    assert store.read_file(commit, "dir/missing/c.txt") is None
    assert store.read_file(commit, "a.txt/below-a-file") is None
    assert store.read_file("0" * 40, "a.txt") is None

    assert sorted((e.path, e.data) for e in store.list_tree(commit, "dir")) == [
        ("dir/b.txt", b"b\n"),
        ("dir/sub/c.txt", b"c\n"),
        ("dir/sub/d.txt", b"d\n"),
    ]
    assert store.list_tree(commit, "missing") == []
    assert store.list_tree(commit, "a.txt") == []  # a file, not a directory


# -- snapshot_tracked ---------------------------------------------------------------------------


def index_digest(path: Path) -> str:
    return hashlib.sha256((path / ".git" / "index").read_bytes()).hexdigest()


def status(path: Path) -> str:
    return run("git", "status", "--porcelain=v1", "--untracked-files=all", cwd=path).stdout


def test_snapshot_tracked_leaves_the_real_index_alone(repo: Path) -> None:
    store = GitStore.open(repo)
    baseline = head(repo)
    (repo / "a.txt").write_text("modified\n")
    (repo / "dir" / "b.txt").unlink()
    (repo / "untracked.txt").write_text("u\n")
    (repo / "dir" / "sub" / "c.txt").write_text("staged\n")
    run("git", "add", "dir/sub/c.txt", cwd=repo)
    (repo / "dir" / "sub" / "c.txt").write_text("staged, then modified again\n")

    before, index_before = status(repo), index_digest(repo)
    tree = store.snapshot_tracked(repo, baseline)
    assert (status(repo), index_digest(repo)) == (before, index_before)
    assert ls_tree(repo, tree) == {
        "a.txt": "modified\n",
        "dir/sub/c.txt": "staged, then modified again\n",
        "dir/sub/d.txt": "d\n",
        "keep/e.txt": "e\n",
    }


def test_snapshot_tracked_of_a_clean_workspace_is_the_baseline_tree(repo: Path) -> None:
    store = GitStore.open(repo)
    baseline = head(repo)
    assert store.snapshot_tracked(repo, baseline) == store.commit_tree(baseline)


def test_snapshot_tracked_from_a_separate_worktree(repo: Path, tmp_path: Path) -> None:
    """Like ``dvc exp run --temp``: the workspace is a copy elsewhere, objects go to the main repo."""
    store = GitStore.open(repo)
    baseline = head(repo)
    temp = tmp_path / "elsewhere" / "exps" / "tmp123"
    shutil.copytree(repo, temp, ignore=shutil.ignore_patterns(".git"))
    (temp / "a.txt").write_text("changed in the temp copy\n")
    (temp / "keep" / "e.txt").unlink()
    (temp / "new-untracked.txt").write_text("n\n")
    before, index_before = status(repo), index_digest(repo)

    tree = store.snapshot_tracked(temp, baseline)
    assert ls_tree(repo, tree) == {
        "a.txt": "changed in the temp copy\n",
        "dir/b.txt": "b\n",
        "dir/sub/c.txt": "c\n",
        "dir/sub/d.txt": "d\n",
    }
    assert (repo / "a.txt").read_text() == "a\n" and (repo / "keep" / "e.txt").exists()
    assert (status(repo), index_digest(repo)) == (before, index_before) and before == ""
    assert not (temp / ".git").exists()


def test_git_errors_are_project_errors(repo: Path) -> None:
    store = GitStore.open(repo)
    with pytest.raises(ProjectError, match="git read-tree failed"):
        store.snapshot_tracked(repo, "0" * 40)


# -- typed reads ------------------------------------------------------------------------------
def test_head_tips_and_ref_targets(repo: Path, tmp_path: Path) -> None:
    store = GitStore.open(repo)
    a = head(repo)
    assert store.head() == a
    b = store.write_commit(store.commit_tree(a), [a], "b\n")
    run("git", "branch", "side", b, cwd=repo)
    run("git", "tag", "-a", "-m", "annotated", "v1", b, cwd=repo)  # a tag object, peeled to b
    run("git", "tag", "light", a, cwd=repo)
    assert store.branch_and_tag_tips() == {
        "refs/heads/main": a,
        "refs/heads/side": b,
        "refs/tags/light": a,
        "refs/tags/v1": b,
    }
    store.create_ref(REF, b)
    run("git", "update-ref", "refs/exps/ab/cdef/tut@2", a, cwd=repo)
    run("git", "pack-refs", "--all", cwd=repo)
    store.create_ref("refs/exps/ab/cdef/tut@3", a)  # loose beside packed ones
    assert store.ref_targets("refs/exps/ab/cdef/") == {
        REF: b,
        "refs/exps/ab/cdef/tut@2": a,
        "refs/exps/ab/cdef/tut@3": a,
    }
    assert store.ref_targets("refs/exps/zz/") == {}

    empty = tmp_path / "empty"
    empty.mkdir()
    run("git", "init", "-q", cwd=empty)
    with pytest.raises(ProjectError, match="this repository has no commits yet; commit your project first"):
        GitStore.open(empty).head()


# -- living beside git: packing, foreign locks, dead writers, full disk ------------------------
@pytest.mark.slow
def test_ref_writes_survive_concurrent_git_pack_refs(repo: Path) -> None:
    """``git pack-refs`` (which ``git gc --auto`` runs on its own) locks refs and packed-refs
    while expckpt creates, replaces and deletes refs: every write waits its turn, none fails,
    git's own runs never fail either, and every ref ends where expckpt put it."""
    store = GitStore.open(repo)
    a = head(repo)
    b = store.write_commit(store.commit_tree(a), [a], "b\n")
    # git's pruning of a loose ref that moved meanwhile prints "cannot lock ref" and skips it;
    # what must not happen is a failed git run.
    script = "for i in $(seq 400); do git pack-refs --all --prune 2>/dev/null || echo failed >>errors; done"
    packer = subprocess.Popen(["sh", "-c", script], cwd=repo)
    try:
        for i in range(60):
            ref = f"refs/exps/ab/cdef/tut@{i}"
            store.set_ref(ref, a, None)
            store.set_ref(ref, b, a)
            if i % 2:
                store.delete_ref(ref, b)
    finally:
        packer.wait(timeout=120)
    assert not (repo / "errors").exists(), (repo / "errors").read_text()
    expected = {f"refs/exps/ab/cdef/tut@{i}": b for i in range(0, 60, 2)}
    assert store.ref_targets("refs/exps/ab/cdef/") == expected
    assert not stray_locks(repo)


def _git_transaction(repo: Path, ref: str, new: str, old: str) -> subprocess.Popen:
    """A live ``git update-ref --stdin`` transaction, prepared: git holds ``<ref>.lock``."""
    proc = subprocess.Popen(
        ["git", "update-ref", "--stdin"], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin and proc.stdout
    proc.stdin.write(f"start\nupdate {ref} {new} {old}\nprepare\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "start: ok\n"
    assert proc.stdout.readline() == "prepare: ok\n"
    return proc


def test_a_lock_held_by_a_live_git_transaction_is_never_removed(repo: Path) -> None:
    store = GitStore.open(repo)
    store.lock_wait = 1.0
    a = head(repo)
    b = store.write_commit(store.commit_tree(a), [a], "b\n")
    c = store.write_commit(store.commit_tree(a), [a], "c\n")
    store.create_ref(REF, a)
    git = _git_transaction(repo, REF, c, a)
    lock = repo / ".git" / (REF + ".lock")
    try:
        start = time.monotonic()
        with pytest.raises(GitLockedError) as info:
            store.set_ref(REF, b, a)
        waited = time.monotonic() - start
        with pytest.raises(GitLockedError):
            store.delete_ref(REF, a)
        assert lock.exists(), "git's lock is still there"
    finally:
        assert git.stdin
        git.stdin.write("commit\n")
        git.stdin.close()
        assert git.wait(timeout=30) == 0, "git's transaction still commits"
    message = str(info.value)
    assert "\n" not in message and f"{lock} is held by another process" in message
    assert "for over 1 s; wait for it to finish and run again" in message
    assert 1.0 <= waited < 5
    assert store.get_ref(REF) == c  # git's update, not ours


@pytest.mark.slow
def test_a_lock_of_a_dead_foreign_process_is_not_removed(repo: Path) -> None:
    """A ``.lock`` no expckpt writer recorded (git killed mid-update, another tool) is someone
    else's: expckpt waits, then fails in one line naming it, and leaves it for the user."""
    store = GitStore.open(repo)
    store.lock_wait = 0.3
    a = head(repo)
    lock = repo / ".git" / (REF + ".lock")
    lock.parent.mkdir(parents=True)
    run(sys.executable, "-c", f"open({str(lock)!r}, 'x').write('')", cwd=repo)  # that process is gone
    with pytest.raises(GitLockedError, match=re.escape(f"{lock} is held by another process")):
        store.set_ref(REF, a, None)
    assert lock.exists()
    assert store.get_ref(REF) is None


_DIE_HOLDING = """
import os, signal, sys
from pathlib import Path
from dulwich.file import GitFile
from expckpt.store.gitlocks import writer_slot
git_dir, target, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with writer_slot(git_dir) as slot:
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(target.name + ".lock")
    if kind == "object":
        slot.will_write_object(lock)
    f = GitFile(str(target), "wb")
    if kind == "ref":
        slot.hold_ref_lock(lock)
    f.write(b"partial")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_lock_left_by_a_killed_expckpt_writer_is_recovered(repo: Path) -> None:
    store = GitStore.open(repo)
    a = head(repo)
    git_dir = repo / ".git"
    killed = run(sys.executable, "-c", _DIE_HOLDING, str(git_dir), str(git_dir / REF), "ref", cwd=repo, check=False)
    assert killed.returncode == -9
    assert (git_dir / (REF + ".lock")).exists()
    store.tree_with_files(store.commit_tree(a), {"other.txt": b"x\n"})  # another write comes first
    assert not (git_dir / (REF + ".lock")).exists(), "the first writer after the kill recovers it"
    store.set_ref(REF, a, None)
    assert run("git", "rev-parse", REF, cwd=repo).stdout.strip() == a

    blob = hashlib.sha1(b"blob 6\x00hello\n").hexdigest()
    target = git_dir / "objects" / blob[:2] / blob[2:]
    killed = run(sys.executable, "-c", _DIE_HOLDING, str(git_dir), str(target), "object", cwd=repo, check=False)
    assert killed.returncode == -9
    tree = store.tree_with_files(store.commit_tree(a), {"hello.txt": b"hello\n"})
    assert ls_tree(repo, tree)["hello.txt"] == "hello\n"
    assert not stray_locks(repo)


_FULL_DISK = """
import resource, sys
from pathlib import Path
from expckpt.publish.committer import _git_write_errors
from expckpt.errors import ExpCkptError
from expckpt.store.gitstore import GitStore
store = GitStore.open(Path(sys.argv[1]))
head = store.head()
store.create_ref("refs/exps/ab/cdef/first@0", head)  # expckpt has written refs here before
resource.setrlimit(resource.RLIMIT_FSIZE, (40, 40))  # a ref ("<sha>\\n") needs 41 bytes
try:
    with _git_write_errors(store.git_dir):
        store.set_ref(sys.argv[2], head, None)
except ExpCkptError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.slow
def test_full_disk_at_the_ref_write_is_one_line_and_leaves_no_lock(repo: Path) -> None:
    result = run(sys.executable, "-X", "dev", "-c", _FULL_DISK, str(repo), REF, cwd=repo, check=False)
    assert result.returncode == 1, result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: file too large for the file-size limit while writing {repo / '.git' / REF};")
    assert "the previous checkpoint is intact" in lines[0]
    assert not stray_locks(repo)
    assert GitStore.open(repo).get_ref(REF) is None
    GitStore.open(repo).set_ref(REF, head(repo), None)  # room again: the write just works
