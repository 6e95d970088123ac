"""gitwrites against real repositories: deletes in git's lock order, beside packed refs and git's locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run
from expckpt.errors import GitLockedError, RefConflictError
from expckpt.store.gitstore import GitStore

REF = "refs/exps/ab/cdef/tut@1"
OTHER = "refs/exps/ab/cdef/tut@2"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    run("git", "init", "-q", cwd=path)
    (path / "a.txt").write_text("a\n")
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "baseline", cwd=path)
    return path


def rev(repo: Path, ref: str) -> str | None:
    proc = run("git", "rev-parse", "-q", "--verify", ref, cwd=repo, check=False)
    return proc.stdout.strip() or None


def stray(repo: Path) -> list[str]:
    """Locks and temp files a write left in ``.git`` (expckpt's own flock files excepted)."""
    git = repo / ".git"
    return sorted(
        str(p.relative_to(git))
        for p in git.rglob("*")
        if (p.name.endswith(".lock") and p.parent.name != "expckpt") or p.name.startswith("expckpt-packed")
    )


def two_commits(store: GitStore) -> tuple[str, str]:
    a = store.head()
    return a, store.write_commit(store.commit_tree(a), [a], "b\n")


def test_delete_of_a_packed_ref_rewrites_packed_refs_without_it_and_nothing_else(repo: Path) -> None:
    store = GitStore.open(repo)
    a, b = two_commits(store)
    store.create_ref(REF, b)
    store.create_ref(OTHER, a)
    run("git", "tag", "-a", "-m", "annotated", "v1", b, cwd=repo)  # a peeled "^" line follows it
    run("git", "pack-refs", "--all", cwd=repo)
    packed = repo / ".git" / "packed-refs"
    os.chmod(packed, 0o640)
    before = packed.read_bytes().splitlines(keepends=True)
    assert not (repo / ".git" / REF).exists()

    store.delete_ref(REF, b)

    assert packed.read_bytes().splitlines(keepends=True) == [line for line in before if REF.encode() not in line]
    assert packed.stat().st_mode & 0o777 == 0o640
    assert rev(repo, REF) is None
    assert (rev(repo, OTHER), rev(repo, "refs/tags/v1^{commit}")) == (a, b)
    assert run("git", "fsck", "--no-dangling", cwd=repo, check=False).returncode == 0
    assert stray(repo) == []


def test_delete_of_a_ref_both_loose_and_packed_leaves_neither(repo: Path) -> None:
    """The packed value is older than the loose one: deleting must not bring it back."""
    store = GitStore.open(repo)
    a, b = two_commits(store)
    store.create_ref(REF, a)
    run("git", "pack-refs", "--all", "--no-prune", cwd=repo)  # packed at a, loose file kept
    store.set_ref(REF, b, a)  # loose now b, packed still a
    assert (repo / ".git" / REF).exists() and REF.encode() in (repo / ".git" / "packed-refs").read_bytes()

    with pytest.raises(RefConflictError) as info:
        store.delete_ref(REF, a)  # the packed value is not the ref's value
    assert (info.value.expected, info.value.actual) == (a, b)
    store.delete_ref(REF, b)

    assert rev(repo, REF) is None
    assert REF.encode() not in (repo / ".git" / "packed-refs").read_bytes()
    assert store.get_ref(REF) is None and stray(repo) == []


def test_delete_waits_for_a_packed_refs_lock_it_does_not_own_and_leaves_it(repo: Path) -> None:
    store = GitStore.open(repo)
    store.lock_wait = 0.3
    a, _ = two_commits(store)
    store.create_ref(REF, a)
    lock = repo / ".git" / "packed-refs.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"open({str(lock)!r}, 'x'); import time; time.sleep(60)"])
    try:
        while not lock.exists():
            pass
        with pytest.raises(GitLockedError, match=f"{lock} is held by another process"):
            store.delete_ref(REF, a)
        assert lock.exists() and store.get_ref(REF) == a
        assert not (repo / ".git" / (REF + ".lock")).exists(), "our own ref lock is released"
    finally:
        holder.kill()
        holder.wait()
    lock.unlink()
    store.delete_ref(REF, a)
    assert store.get_ref(REF) is None


_DIE_DELETING = """
import os, signal, sys
from pathlib import Path
from dulwich.file import GitFile
from expckpt.store.gitlocks import writer_slot
git_dir, ref = Path(sys.argv[1]), Path(sys.argv[2])
with writer_slot(git_dir) as slot:
    held = GitFile(str(ref), "wb"), GitFile(str(git_dir / "packed-refs"), "wb")
    slot.hold_ref_lock(Path(str(ref) + ".lock"), git_dir / "packed-refs.lock")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_delete_killed_holding_both_locks_is_recovered_by_the_next_write(repo: Path) -> None:
    store = GitStore.open(repo)
    a, _ = two_commits(store)
    store.create_ref(REF, a)
    git_dir = repo / ".git"
    killed = run(sys.executable, "-c", _DIE_DELETING, str(git_dir), str(git_dir / REF), cwd=repo, check=False)
    assert killed.returncode == -9, killed.stderr
    assert (git_dir / (REF + ".lock")).exists() and (git_dir / "packed-refs.lock").exists()

    store.tree_with_files(store.commit_tree(a), {"x.txt": b"x\n"})  # any write takes the slot first

    assert stray(repo) == []
    run("git", "pack-refs", "--all", cwd=repo)  # git can lock packed-refs again
    store.delete_ref(REF, a)
    assert rev(repo, REF) is None


_FULL_DISK = """
import resource, sys
from pathlib import Path
from expckpt.store.gitstore import GitStore
store = GitStore.open(Path(sys.argv[1]))
store.head()
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    store.delete_ref(sys.argv[2], store.get_ref(sys.argv[2]))
except OSError as exc:
    print(exc.filename, file=sys.stderr)
    sys.exit(1)
"""


def test_full_disk_while_rewriting_packed_refs_keeps_the_ref_and_leaves_no_lock(repo: Path) -> None:
    store = GitStore.open(repo)
    a, _ = two_commits(store)
    for i in range(20):
        store.create_ref(f"refs/exps/ab/cdef/tut@{i}", a)
    run("git", "pack-refs", "--all", cwd=repo)
    packed = (repo / ".git" / "packed-refs").read_bytes()
    limit = str(len(packed) // 2)
    result = run(sys.executable, "-c", _FULL_DISK, str(repo), REF, limit, cwd=repo, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == str(repo / ".git" / "packed-refs")
    assert (repo / ".git" / "packed-refs").read_bytes() == packed
    assert rev(repo, REF) == a and stray(repo) == []
