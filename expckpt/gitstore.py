"""The Git operations expckpt needs, behind one narrow, typed interface.

Objects and refs go through dulwich in-process (fast enough for the training loop's hot
path); the one-off workspace snapshot and the bulk ref listing use the ``git`` executable with
argument lists (never a shell string). Every ref update is a compare-and-swap.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dulwich.file import FileLocked
from dulwich.object_store import commit_tree_changes
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from expckpt.errors import ProjectError, RefConflictError

__all__ = ["GitStore", "RefEntry"]

FILE_MODE = 0o100644
_T = TypeVar("_T")
_SEP = "\x1f\x1e"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_INHERITED_GIT_VARS = {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"}


@dataclass(frozen=True)
class RefEntry:
    """One ref as listed in bulk: name, commit sha, commit time and message."""

    ref: str
    commit: str
    time: int
    message: str


class GitStore:
    """A Git repository's object database and refs (the main repo, also for ``--temp`` runs)."""

    def __init__(self, repo: Repo) -> None:
        self._repo = repo
        self.git_dir = Path(repo.controldir())
        self._identity: bytes | None = None

    @classmethod
    def open(cls, root: Path) -> GitStore:
        try:
            return cls(Repo(str(root)))
        except Exception as exc:  # dulwich raises NotGitRepository and friends
            raise ProjectError(
                f"{root} is not a Git repository; run `git init && dvc init` first", path=root
            ) from exc

    # -- identity -------------------------------------------------------------------------
    def identity(self) -> bytes:
        """``Name <email>`` from Git config, else ``user <user@host>``: never fails."""
        if self._identity is None:
            name = email = None
            with contextlib.suppress(Exception):
                config = self._repo.get_config_stack()
                name = config.get((b"user",), b"name").decode()
                email = config.get((b"user",), b"email").decode()
            if not name or not email:
                user = _username()
                name, email = name or user, email or f"{user}@{socket.gethostname()}"
            self._identity = f"{name} <{email}>".encode()
        return self._identity

    # -- objects --------------------------------------------------------------------------
    def has_commit(self, sha: str) -> bool:
        try:
            return isinstance(self._repo[sha.encode()], Commit)
        except (KeyError, ValueError):
            return False

    def commit_tree(self, commit: str) -> str:
        return self._repo[commit.encode()].tree.decode()

    def tree_with_files(self, base_tree: str, files: dict[str, bytes | None]) -> str:
        """Write blobs for ``files`` (None deletes) over ``base_tree``; return the new tree."""
        store = self._repo.object_store

        def write() -> str:
            changes = []
            for path, data in sorted(files.items()):
                if data is None:
                    changes.append((path.encode(), None, None))
                    continue
                blob = Blob.from_string(data)
                store.add_object(blob)
                changes.append((path.encode(), FILE_MODE, blob.id))
            return commit_tree_changes(store, base_tree.encode(), changes).decode()

        return self._write("the checkpoint's Git tree", write)

    def write_commit(self, tree: str, parents: list[str], message: str) -> str:
        commit = Commit()
        commit.tree = tree.encode()
        commit.parents = [p.encode() for p in parents]
        commit.author = commit.committer = self.identity()
        commit.author_time = commit.commit_time = int(time.time())
        offset = -time.timezone if not time.localtime().tm_isdst else -time.altzone
        commit.author_timezone = commit.commit_timezone = offset
        commit.message = message.encode()
        self._write("the checkpoint's Git commit", lambda: self._repo.object_store.add_object(commit))
        return commit.id.decode()

    def read_file(self, commit: str, path: str) -> bytes | None:
        """The content of ``path`` at ``commit``, or None."""
        try:
            tree = self._repo[self._repo[commit.encode()].tree]
            for part in path.split("/"):
                assert isinstance(tree, Tree)
                _, sha = tree[part.encode()]
                tree = self._repo[sha]
        except (KeyError, AssertionError):
            return None
        return tree.as_raw_string() if isinstance(tree, Blob) else None

    def list_dir(self, commit: str, path: str) -> dict[str, bytes]:
        """Every file under directory ``path`` at ``commit`` (relative path -> content)."""
        out: dict[str, bytes] = {}
        try:
            tree = self._repo[self._repo[commit.encode()].tree]
            for part in path.strip("/").split("/"):
                _, sha = tree[part.encode()]
                tree = self._repo[sha]
        except (KeyError, TypeError):  # TypeError: a path below a file (a Blob has no entries)
            return out
        if not isinstance(tree, Tree):
            return out
        for entry in self._repo.object_store.iter_tree_contents(tree.id):
            obj = self._repo[entry.sha]
            if isinstance(obj, Blob):
                out[f"{path.strip('/')}/{entry.path.decode()}"] = obj.as_raw_string()
        return out

    # -- refs -----------------------------------------------------------------------------
    def get_ref(self, ref: str) -> str | None:
        try:
            return self._repo.refs[ref.encode()].decode()
        except KeyError:
            return None

    @contextlib.contextmanager
    def _writers_lock(self) -> Iterator[None]:
        """Exclusive among expckpt's Git writers in this repository; the kernel drops it when
        its holder dies, however it dies."""
        path = self.git_dir / "expckpt" / "git-writes.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, what: str, write: Callable[[], _T]) -> _T:
        """Run a dulwich write of objects or refs, recovering from a writer that was killed.

        dulwich writes each loose object and ref through ``<name>.lock`` (created exclusively,
        renamed into place when complete). A process killed in between leaves the ``.lock``
        behind, and every later write of that name fails, e.g. the ref ``<exp>@<step>`` when the
        run resumes and redoes that step. expckpt's writes all hold ``_writers_lock``, so a
        ``.lock`` met while holding it was left by a writer that is gone: it is removed and the
        write tried once more.
        """
        with self._writers_lock():
            try:
                return write()
            except FileLocked as exc:
                with contextlib.suppress(FileNotFoundError):
                    Path(os.fsdecode(exc.lockfilename)).unlink()
            try:
                return write()
            except FileLocked as exc:
                lock = Path(os.fsdecode(exc.lockfilename))
                raise RefConflictError(
                    f"could not write {what}: {lock} was locked again by another process at once;"
                    " if no other Git command is running in this repository, run again",
                    ref=str(lock),
                ) from exc

    def create_ref(self, ref: str, commit: str) -> None:
        """Create ``ref`` at ``commit``; fail loudly if it already exists."""
        if not self._write(ref, lambda: self._repo.refs.add_if_new(ref.encode(), commit.encode())):
            raise RefConflictError(
                f"{ref} already exists (another run wrote it); use another experiment name",
                ref=ref,
            )

    def replace_ref(self, ref: str, commit: str, expected: str) -> bool:
        """Point ``ref`` at ``commit`` only if it still points at ``expected``."""
        return bool(self._write(ref, lambda: self._repo.refs.set_if_equals(ref.encode(), expected.encode(), commit.encode())))

    def delete_ref(self, ref: str, expected: str) -> bool:
        """Delete ``ref`` only if it still points at ``expected``; report whether it did."""
        return bool(self._write(ref, lambda: self._repo.refs.remove_if_equals(ref.encode(), expected.encode())))

    def list_refs(self, prefix: str) -> list[RefEntry]:
        """All refs under ``prefix`` with commit time and message, in one ``git`` call."""
        fmt = f"%(refname){_SEP}%(objectname){_SEP}%(committerdate:unix){_SEP}%(contents){_SEP}"
        out = self.git("for-each-ref", f"--format={fmt}", *([prefix] if prefix else []))
        entries = []
        fields = out.split(_SEP)
        for i in range(0, len(fields) - 1, 4):
            ref = fields[i].lstrip("\n")
            stamp = fields[i + 2]
            entries.append(
                RefEntry(ref, fields[i + 1], int(stamp) if stamp.isdigit() else 0, fields[i + 3])
            )
        return entries

    # -- workspace --------------------------------------------------------------------------
    def snapshot_tracked(self, worktree: Path, baseline: str) -> str:
        """Tree of ``baseline`` with every tracked file as it is now in ``worktree``.

        Like ``git add -u`` into a throw-away index, so the real index is never touched. The
        objects land in this repository even when ``worktree`` is a ``--temp`` copy.
        """
        with tempfile.TemporaryDirectory(prefix="expckpt-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": str(worktree)}
            self.git("read-tree", baseline, env=env)
            self.git("add", "-u", "--", ".", env=env, cwd=worktree)
            return self.git("write-tree", env=env).strip()

    def git(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
        binary: bool = False,
    ) -> Any:
        full_env = {k: v for k, v in os.environ.items() if k not in _INHERITED_GIT_VARS}
        full_env.update({"GIT_DIR": str(self.git_dir), **(env or {})})
        proc = subprocess.run(
            ["git", *args],
            env=full_env,
            cwd=cwd,
            input=input.encode() if input is not None else None,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()
            raise ProjectError(f"git {args[0]} failed: {message}", path=self.git_dir)
        return proc.stdout if binary else proc.stdout.decode(errors="replace")

    # -- reads for gc
    def commit_trees(self, tips: Iterable[str]) -> dict[str, str]:
        """Every commit reachable from the commit (or tag) shas ``tips`` -> its root tree sha."""
        wanted = sorted({t for t in tips if _HEX40.fullmatch(t)})
        if not wanted:
            return {}
        out = self.git("rev-list", "--format=%T", "--stdin", input="\n".join(wanted) + "\n")
        trees: dict[str, str] = {}
        commit = None
        for line in out.split():
            if line == "commit":
                continue
            if commit is None:
                commit = line
            else:
                trees[commit], commit = line, None
        return trees

    def files_in_tree(self, tree: str, match: Callable[[str], bool], skip_dirs: frozenset[str]) -> dict[str, str]:
        """Blobs under ``tree`` whose file name satisfies ``match`` (path -> blob sha), not
        descending into directories named in ``skip_dirs``.

        Memoised per subtree for the life of this store: commits that share directories (every
        checkpoint of a run shares all but the root and its dvclive tree) cost one read each.
        """
        memo: dict[tuple[str, object], dict[str, str]] = self.__dict__.setdefault("_files_memo", {})
        key = (tree, (match, skip_dirs))
        if key in memo:
            return memo[key]
        found: dict[str, str] = {}
        try:
            obj = self._repo[tree.encode()]
        except KeyError:
            obj = None
        if isinstance(obj, Tree):
            for entry in obj.iteritems():
                name = entry.path.decode(errors="surrogateescape")
                if entry.mode & 0o170000 == 0o040000:
                    if name not in skip_dirs:
                        for sub, sha in self.files_in_tree(entry.sha.decode(), match, skip_dirs).items():
                            found[f"{name}/{sub}"] = sha
                elif entry.mode & 0o170000 == 0o100000 and match(name):
                    found[name] = entry.sha.decode()
        memo[key] = found
        return found

    def branch_and_tag_tips(self) -> dict[str, str]:
        """Every branch and tag (full ref name) -> the commit it names (tags peeled)."""
        out = self.git("for-each-ref", "--format=%(refname) %(objectname) %(*objectname)", "refs/heads", "refs/tags")
        tips = {}
        for line in out.splitlines():
            name, *shas = line.split()
            if shas:
                tips[name] = shas[-1]
        return tips

    def worktree_files(self, worktree: Path, pathspecs: Iterable[str]) -> list[str]:
        """Files under ``worktree`` matching ``pathspecs`` that Git tracks or would track
        (untracked ones too; ignored ones not), relative paths."""
        out = self.git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *pathspecs,
                       env={"GIT_WORK_TREE": str(worktree)}, cwd=Path(worktree))
        return sorted({p for p in out.split("\0") if p})

    def blob(self, sha: str) -> bytes | None:
        """A blob's content by sha, or None when it is missing or not a blob."""
        try:
            obj = self._repo[sha.encode()]
        except (KeyError, ValueError):
            return None
        return obj.as_raw_string() if isinstance(obj, Blob) else None


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "expckpt"
