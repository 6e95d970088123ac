"""The Git operations expckpt needs, behind one narrow, typed interface.

Nothing outside this module and its two helpers (``gittrees``: reads of trees and history;
``gitwrites``: ref writes beside git's own) touches Git. Callers get typed reads and
compare-and-swap writes in scmrepo's style: ``set_ref(name, new, old)`` (``old=None``: create
only) and ``delete_ref(name, old)`` raise ``RefConflictError`` when they lose a race, never
return a flag to be ignored.

The repository -- objects, refs, config -- is read and written through dulwich only, in-process
(fast enough for the training loop's hot path and for ``expckpt show`` on 1000 checkpoints).
The ``git`` executable runs in this module alone (``_git``, argument lists, never a shell
string), for the two things a library cannot do the way the user's own ``git`` does:

* the workspace (``snapshot_tracked``, ``worktree_files``): which files are tracked or ignored
  and how a file becomes a blob is git's -- the index, every ignore source, ``.gitattributes``
  clean filters and eol rules (Git LFS, for one), which dulwich applies only in part;
* the network (``remote_refs``, ``push``): the user's remotes work as their ``git push`` does,
  with their credential helpers, ``url.insteadOf`` rewrites, ssh and proxy settings.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dulwich.object_store import commit_tree_changes
from dulwich.objects import Blob, Commit
from dulwich.refs import DiskRefsContainer, check_ref_format
from dulwich.repo import Repo

from expckpt.errors import ProjectError, RefConflictError
from expckpt.store.gitlocks import WriterSlot
from expckpt.store.gittrees import HEX40, TreeEntry, TreeReads
from expckpt.store.gitwrites import LOCK_WAIT_S, RecordingStore, delete_ref, swap_ref, write_waiting_for_locks

__all__ = ["GitStore", "PushOutcome", "RefEntry", "TreeEntry"]

FILE_MODE = 0o100644
_T = TypeVar("_T")
_INHERITED_GIT_VARS = {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"}


@dataclass(frozen=True)
class RefEntry:
    """One ref as listed in bulk: name, commit sha, commit time and message."""

    ref: str
    commit: str
    time: int
    message: str


@dataclass(frozen=True)
class PushOutcome:
    """What ``git push`` said: the refs the remote refused, or the first error line."""

    rejected: list[str]
    error: str | None


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
            raise ProjectError(f"{root} is not a Git repository; run `git init && dvc init` first", path=root) from exc

    def close(self) -> None:
        """Release dulwich's open pack files."""
        self._repo.close()

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

    # -- object writes --------------------------------------------------------------------
    def tree_with_files(self, base_tree: str, files: dict[str, bytes | None]) -> str:
        """Write blobs for ``files`` (None deletes) over ``base_tree``; return the new tree."""

        def write(slot: WriterSlot) -> str:
            store = RecordingStore(self._repo.object_store, slot, self.git_dir)
            changes: list[tuple[bytes, int | None, Any]] = []
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
        """Every ref under ``prefix`` (e.g. ``refs/exps/ab/cdef/``; ``""``: all) -> its sha,
        sorted by name; refs that hold no valid sha are skipped (``git for-each-ref`` too).

        Loose refs are found by walking their directory and packed ones come from packed-refs,
        so a ref that is only packed costs no failed file read (most are, after a ``git gc``).
        """
        base = prefix.rstrip("/") or "refs"
        refs = self._refs()
        packed = {k: v for k, v in refs.get_packed_refs().items() if k.startswith(base.encode() + b"/")}
        top = Path(os.fsdecode(refs.path))
        loose = {
            os.fsencode(Path(directory, f).relative_to(top).as_posix())
            for directory, _, files in os.walk(top / base)
            for f in files
        }
        targets = {}
        for name in loose | set(packed):
            sha = (refs.read_loose_ref(name) if name in loose else None) or packed.get(name)  # it checks the name
            if sha and sha.startswith(b"ref: "):  # a symbolic ref: what it points at, if anything
                try:
                    sha = refs.follow(name)[1]
                except Exception:  # noqa: BLE001 - a loop or a dangling name: no target, like git
                    sha = None
            text = sha.decode(errors="replace") if sha else ""
            if HEX40.fullmatch(text):
                targets[name.decode(errors="replace")] = text
        return dict(sorted(targets.items()))

    def branch_and_tag_tips(self) -> dict[str, str]:
        """``refs/heads/*`` and ``refs/tags/*`` -> the object each names (tags peeled), sorted."""
        tips = {**self.ref_targets("refs/heads/"), **self.ref_targets("refs/tags/")}
        return {ref: self.peel(sha) for ref, sha in sorted(tips.items())}

    def list_refs(self, prefix: str) -> list[RefEntry]:
        """All refs under ``prefix`` with commit time and message (committer time; 0 and the
        tag message for a tag; 0 and "" for a missing object). A message is untrusted (a
        pulled ref is anyone's): it is returned as data, for the caller to validate."""
        entries = []
        for ref, sha in self.ref_targets(prefix).items():
            stamp, message = 0, ""
            found = self._raw(sha)
            if found is not None:
                head, _, text = found[1].partition(b"\n\n")
                message = text.decode(errors="replace")
                for line in head.split(b"\n"):
                    if line.startswith(b"committer "):
                        value = line.rsplit(b" ", 2)[-2] if line.count(b" ") >= 2 else b""
                        stamp = int(value) if value.isdigit() else 0
            entries.append(RefEntry(ref, sha, stamp, message))
        return entries

    def set_ref(self, ref: str, new: str, old: str | None) -> None:
        """Point ``ref`` at ``new`` if it holds ``old`` now (``None``: only if it does not exist).

        Raises ``RefConflictError`` (with ``expected`` and ``actual``) when it does not: the
        caller lost a race, and nothing was written.
        """
        self._check_ref(ref)
        if not HEX40.fullmatch(new):
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
        if not HEX40.fullmatch(old):
            raise ValueError(f"not a 40-hex commit sha: {old!r}")
        self._write(ref, lambda slot: delete_ref(slot, self._refs(), ref, old))

    def _write(self, what: str, write: Callable[[WriterSlot], _T]) -> _T:
        return write_waiting_for_locks(self.git_dir, what, write, lock_wait=self.lock_wait)

    def _check_ref(self, ref: str) -> None:
        if not ref.startswith("refs/") or not check_ref_format(ref.encode()):
            raise RefConflictError(f"{ref!r} is not a valid Git ref name", ref=ref)

    def remotes(self) -> list[str]:
        """The Git remotes configured for this repository (what ``git remote`` lists)."""
        names: dict[str, None] = {}
        with contextlib.suppress(Exception):
            for section in self._repo.get_config_stack().sections():
                if len(section) == 2 and section[0] == b"remote":
                    names[section[1].decode(errors="replace")] = None
        return sorted(names)

    # -- the git executable: the workspace ---------------------------------------------------
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

    def worktree_files(self, worktree: Path, pathspecs: Sequence[str]) -> list[str]:
        """Files under ``worktree`` matching ``pathspecs`` that Git tracks or would track
        (untracked ones too; ignored ones not), relative paths."""
        out = self._git(
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *pathspecs,
            env={"GIT_WORK_TREE": str(worktree)},
            cwd=Path(worktree),
        )
        return sorted({p for p in out.split("\0") if p})

    def unstage(self, worktree: Path, paths: Sequence[str]) -> bool:
        """``git reset -q -- <paths>``: the index entries under ``paths`` back to HEAD (an entry
        HEAD lacks is dropped); the files are not touched. False when Git refused (a held
        ``index.lock``, a damaged index): the index is then as it was."""
        if not paths:
            return True
        proc = self._run(["reset", "-q", "--", *paths], {"GIT_WORK_TREE": str(worktree)}, cwd=Path(worktree))
        return proc.returncode == 0

    # -- the git executable: the network ---------------------------------------------------
    def remote_refs(self, remote: str) -> dict[str, str]:
        """``git ls-remote <remote>``: ref name -> sha (``<tag>^{}`` lines peel annotated tags)."""
        if remote not in self.remotes():
            raise ProjectError(
                f"no Git remote {remote!r} in this repository; name one `git remote` lists", path=self.git_dir
            )
        listing = self._git("ls-remote", "--", remote, env=_NO_PROMPT)
        return dict(reversed(line.split("\t", 1)) for line in listing.splitlines() if "\t" in line)

    def ls_remote(self, remote: str, pattern: str, *, timeout: float = 600) -> dict[str, str]:
        """``git ls-remote --refs <remote> <pattern>`` (a name or a URL): ref -> sha.

        Raises ``ProjectError`` with the remote's last line of why (network, credentials, timeout)."""
        try:
            proc = self._run(["ls-remote", "--refs", "--", remote, pattern], _NO_PROMPT, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ProjectError(f"git ls-remote {remote} took over {timeout:g} s", path=self.git_dir) from exc
        if proc.returncode != 0:
            lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
            raise ProjectError(lines[-1] if lines else f"git ls-remote exited {proc.returncode}", path=self.git_dir)
        pairs = (line.partition("\t") for line in proc.stdout.decode(errors="replace").splitlines())
        return {name: sha for sha, _, name in pairs if name}

    def fetch(self, remote: str, refspecs: Sequence[str]) -> str | None:
        """``git fetch --no-tags <remote> <refspec>...`` (no prompts): None, or one line of why it failed."""
        proc = self._run(["fetch", "--no-tags", "--no-write-fetch-head", "--", remote, *refspecs], _NO_PROMPT)
        if proc.returncode == 0:
            return None
        lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"git fetch exited {proc.returncode}"

    def push(self, remote: str, pairs: Sequence[tuple[str, str]]) -> PushOutcome:
        """``git push --porcelain <remote> <commit>:<ref>...`` (no prompts): who refused what."""
        specs = [f"{commit}:{ref}" for ref, commit in pairs]
        proc = self._run(["push", "--porcelain", "--", remote, *specs], _NO_PROMPT)
        if proc.returncode == 0:
            return PushOutcome([], None)
        stdout, stderr = (proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        rejected = [
            line.split("\t")[1].partition(":")[2]
            for line in stdout.splitlines()
            if line.startswith("!\t") and "\t" in line[2:]
        ]
        if rejected and "[rejected]" in stdout:
            return PushOutcome(rejected, None)
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        return PushOutcome([], (fatal or lines or [f"git push exited {proc.returncode}"])[0])

    def _run(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {k: v for k, v in os.environ.items() if k not in _INHERITED_GIT_VARS}
        full_env.update({"GIT_DIR": str(self.git_dir), **(env or {})})
        return subprocess.run(["git", *args], env=full_env, cwd=cwd, capture_output=True, check=False, timeout=timeout)

    def _git(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
        proc = self._run(list(args), env, cwd)
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()
            raise ProjectError(f"git {args[0]} failed: {message}", path=self.git_dir)
        return proc.stdout.decode(errors="replace")


_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "expckpt"
