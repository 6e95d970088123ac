"""The Git operations expckpt needs, behind one narrow, typed interface.

Nothing outside this module runs ``git``: callers get typed reads (``head``, ``get_ref``,
``ref_targets``, ``branch_and_tag_tips``, ``reachable_commits``, ``read_blobs``, ``list_refs``,
``read_file``, ``list_tree``) and compare-and-swap writes in scmrepo's style:
``set_ref(name, new, old)`` (``old=None``: create only) and ``delete_ref(name, old)`` raise
``RefConflictError`` when they lose a race, never return a flag to be ignored.

Objects and ref updates go through dulwich in-process (fast enough for the training loop's hot
path); deletes, the workspace snapshot and bulk listings use the ``git`` executable with
argument lists (never a shell string). How writes live beside git's own (locks, ``git
pack-refs``) is in ``gitwrites`` and ``gitlocks``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dulwich.object_store import commit_tree_changes
from dulwich.objects import Blob, Commit, Tree
from dulwich.refs import DiskRefsContainer, check_ref_format
from dulwich.repo import Repo

from expckpt.errors import ProjectError, RefConflictError
from expckpt.gitlocks import WriterSlot
from expckpt.gittrees import TreeEntry, TreeReads
from expckpt.gitwrites import LOCK_WAIT_S, RecordingStore, delete_ref_with_git, swap_ref, write_waiting_for_locks

__all__ = ["GitStore", "RefEntry", "TreeEntry"]

FILE_MODE = 0o100644
_T = TypeVar("_T")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_INHERITED_GIT_VARS = {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"}


@dataclass(frozen=True)
class RefEntry:
    """One ref as listed in bulk: name, commit sha, commit time and message."""

    ref: str
    commit: str
    time: int
    message: str


class GitStore(TreeReads):
    """A Git repository's object database and refs (the main repo, also for ``--temp`` runs)."""

    def __init__(self, repo: Repo) -> None:
        self._repo = repo
        self.git_dir = Path(repo.controldir())
        self._identity: bytes | None = None
        self.lock_wait = LOCK_WAIT_S

    @classmethod
    def open(cls, root: Path) -> GitStore:
        try:
            return cls(Repo(str(root)))
        except Exception as exc:  # dulwich raises NotGitRepository and friends
            raise ProjectError(
                f"{root} is not a Git repository; run `git init && dvc init` first", path=root
            ) from exc

    def close(self) -> None:
        """Release dulwich's open pack files."""
        self._repo.close()

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

    def commit_message(self, sha: str) -> str | None:
        """The message of commit ``sha`` (``None`` if there is no such commit here)."""
        try:
            obj = self._repo[sha.encode()]
        except (KeyError, ValueError):
            return None
        return obj.message.decode("utf-8", "replace") if isinstance(obj, Commit) else None

    def commit_tree(self, commit: str) -> str:
        return self._repo[commit.encode()].tree.decode()

    def tree_with_files(self, base_tree: str, files: dict[str, bytes | None]) -> str:
        """Write blobs for ``files`` (None deletes) over ``base_tree``; return the new tree."""
        def write(slot: WriterSlot) -> str:
            store = RecordingStore(self._repo.object_store, slot, self.git_dir)
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
        self._write(
            "the checkpoint's Git commit",
            lambda slot: RecordingStore(self._repo.object_store, slot, self.git_dir).add_object(commit),
        )
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

    # -- refs -----------------------------------------------------------------------------
    def _refs(self) -> DiskRefsContainer:
        """The refs as they are on disk now: a fresh container per call, because dulwich's
        cached packed-refs can look unchanged after a fast ``git pack-refs`` (same size,
        reused inode, same coarse timestamp)."""
        return DiskRefsContainer(self._repo.commondir(), self._repo.controldir())

    def get_ref(self, ref: str) -> str | None:
        try:
            return self._refs()[ref.encode()].decode()
        except KeyError:
            return None

    def head(self) -> str:
        """The commit HEAD points at; ``ProjectError`` in a repository without commits."""
        sha = self.get_ref("HEAD")
        if sha is None:
            raise ProjectError("this repository has no commits yet; commit your project first", path=self.git_dir)
        return sha

    def ref_targets(self, prefix: str) -> dict[str, str]:
        """Every ref under ``prefix`` (e.g. ``refs/exps/ab/cdef/``) -> the sha it holds, in-process."""
        base = prefix.rstrip("/").encode()
        return {
            f"{prefix.rstrip('/')}/{name.decode()}": sha.decode()
            for name, sha in self._refs().as_dict(base).items()
        }

    def branch_and_tag_tips(self) -> dict[str, str]:
        """``refs/heads/*`` and ``refs/tags/*`` -> the commit each names (tags peeled), sorted."""
        out = self._git("for-each-ref", "--format=%(refname) %(objectname) %(*objectname)", "refs/heads", "refs/tags")
        tips = {}
        for line in out.split("\n"):  # refnames hold no spaces; other whitespace is data
            parts = [part for part in line.split(" ") if part]
            if len(parts) >= 2:
                tips[parts[0]] = parts[-1]
        return tips

    def reachable_commits(self, tips: Iterable[str]) -> list[str]:
        """Every commit reachable from ``tips`` (full ref names, ``HEAD`` or 40-hex shas)."""
        wanted = list(dict.fromkeys(tips))
        for tip in wanted:
            if not (tip == "HEAD" or tip.startswith("refs/") or _HEX40.fullmatch(tip)) or any(c.isspace() for c in tip):
                raise ValueError(f"not a full ref name, HEAD or commit sha: {tip!r}")
        if not wanted:
            return []
        return self._git("rev-list", "--stdin", input="\n".join(wanted) + "\n").split()

    def read_blobs(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """``(commit, path) -> content`` for each file that exists, in one ``git cat-file`` call."""
        keys = list(dict.fromkeys(wanted))
        for commit, path in keys:
            if not _HEX40.fullmatch(commit) or not path or "\n" in path or "\r" in path:
                raise ValueError(f"not a commit sha and file path: {commit!r}, {path!r}")
        if not keys:
            return {}
        out = self._git("cat-file", "--batch", input="".join(f"{c}:{p}\n" for c, p in keys), binary=True)
        found: dict[tuple[str, str], bytes] = {}
        pos = 0
        for key in keys:  # one "<sha> <type> <size>\n<content>\n" or "<input> missing\n" each
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) == 3 and header[2].isdigit():
                size = int(header[2])
                if header[1] == b"blob":
                    found[key] = out[pos : pos + size]
                pos += size + 1
        return found

    def set_ref(self, ref: str, new: str, old: str | None) -> None:
        """Point ``ref`` at ``new`` if it holds ``old`` now (``None``: only if it does not exist).

        Raises ``RefConflictError`` (with ``expected`` and ``actual``) when it does not: the
        caller lost a race, and nothing was written.
        """
        self._check_ref(ref)
        if not _HEX40.fullmatch(new):
            raise ValueError(f"not a 40-hex commit sha: {new!r}")
        self._write(ref, lambda slot: swap_ref(slot, self._refs(), ref, new, old))

    def create_ref(self, ref: str, commit: str) -> None:
        """``set_ref(ref, commit, None)``: create ``ref``, never replace one."""
        self.set_ref(ref, commit, None)

    def delete_ref(self, ref: str, old: str) -> None:
        """Delete ``ref`` if it holds ``old`` now; else raise ``RefConflictError``.

        ``actual`` on the error says what happened instead: ``None``, someone else deleted it
        already; a sha, it was moved (keep it: it is no longer the checkpoint you meant).
        """
        self._check_ref(ref)
        if not _HEX40.fullmatch(old):
            raise ValueError(f"not a 40-hex commit sha: {old!r}")
        self._write(ref, lambda slot: delete_ref_with_git(self._git_env(), self.get_ref, ref, old))

    def _write(self, what: str, write: Callable[[WriterSlot], _T]) -> _T:
        return write_waiting_for_locks(self.git_dir, what, write, lock_wait=self.lock_wait)

    def _check_ref(self, ref: str) -> None:
        if not ref.startswith("refs/") or not check_ref_format(ref.encode()):
            raise RefConflictError(f"{ref!r} is not a valid Git ref name", ref=ref)

    def list_refs(self, prefix: str) -> list[RefEntry]:
        """All refs under ``prefix`` with commit time and message, in two ``git`` calls.

        Messages are untrusted (a pulled ref is anyone's), so they are read length-prefixed
        through ``cat-file --batch``: no bytes in one message can forge or hide another ref.
        """
        listing = self._git("for-each-ref", "--format=%(objectname) %(refname)", *([prefix] if prefix else []))
        pairs = [line.split(" ", 1) for line in listing.splitlines() if " " in line]
        if not pairs:
            return []
        raw = self._git("cat-file", "--batch", input="".join(f"{sha}\n" for sha, _ in pairs), binary=True)
        entries, pos = [], 0
        for sha, ref in pairs:
            end = raw.index(b"\n", pos)
            header = raw[pos:end].split()
            pos = end + 1
            time, message = 0, ""
            if len(header) == 3 and header[2].isdigit():  # b"<sha> <type> <size>", else missing
                body = raw[pos : pos + int(header[2])]
                pos += int(header[2]) + 1
                head, _, text = body.partition(b"\n\n")
                message = text.decode(errors="replace")
                for line in head.split(b"\n"):
                    if line.startswith(b"committer "):
                        stamp = line.rsplit(b" ", 2)[-2] if line.count(b" ") >= 2 else b""
                        time = int(stamp) if stamp.isdigit() else 0
            entries.append(RefEntry(ref, sha, time, message))
        return entries

    # -- workspace --------------------------------------------------------------------------
    def snapshot_tracked(self, worktree: Path, baseline: str) -> str:
        """Tree of ``baseline`` with every tracked file as it is now in ``worktree``.

        Like ``git add -u`` into a throw-away index, so the real index is never touched. The
        objects land in this repository even when ``worktree`` is a ``--temp`` copy.
        """
        with tempfile.TemporaryDirectory(prefix="expckpt-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": str(worktree)}
            self._git("read-tree", baseline, env=env)
            self._git("add", "-u", "--", ".", env=env, cwd=worktree)
            return self._git("write-tree", env=env).strip()

    def _git_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        full_env = {k: v for k, v in os.environ.items() if k not in _INHERITED_GIT_VARS}
        full_env.update({"GIT_DIR": str(self.git_dir), **(env or {})})
        return full_env

    def _git(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
        binary: bool = False,
    ) -> Any:
        proc = subprocess.run(
            ["git", *args],
            env=self._git_env(env),
            cwd=cwd,
            input=input.encode() if input is not None else None,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()
            raise ProjectError(f"git {args[0]} failed: {message}", path=self.git_dir)
        return proc.stdout if binary else proc.stdout.decode(errors="replace")

def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "expckpt"
