"""Reads of trees, worktrees and remotes for ``GitStore`` (gc, safe restores, pushing).

A mixin: ``GitStore`` provides ``_repo`` (dulwich) and ``_git`` (the git executable, argument
lists only). Every tree read here treats names and modes as untrusted: callers decide what is safe.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dulwich.objects import Blob, Tree

from expckpt.errors import ProjectError

__all__ = ["TreeEntry", "TreeReads"]

_HEX40 = re.compile(r"[0-9a-f]{40}")
_DIR_MODE = 0o040000


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a tree listing: path (``/``-joined as stored), Git mode, object id, and the
    content when the object is a blob (else ``None``)."""

    path: str
    mode: int
    sha: str
    data: bytes | None


class TreeReads:
    """Tree, worktree and remote reads (mixed into ``GitStore``)."""

    _repo: Any
    git_dir: Path
    _git: Callable[..., Any]

    # -- remotes ------------------------------------------------------------------------------
    def remotes(self) -> list[str]:
        """The Git remotes this repository has (``git remote``)."""
        return self._git("remote").split()

    def remote_refs(self, remote: str) -> dict[str, str]:
        """``git ls-remote <remote>``: ref name -> sha (``<tag>^{}`` lines peel annotated tags)."""
        if remote not in self.remotes():
            raise ProjectError(f"no Git remote {remote!r} in this repository; name one `git remote` lists",
                               path=self.git_dir)
        listing = self._git("ls-remote", "--", remote)
        return dict(reversed(line.split("\t", 1)) for line in listing.splitlines() if "\t" in line)

    def missing_objects(self, shas: Iterable[str]) -> set[str]:
        """Which of the 40-hex ``shas`` this repository does not have."""
        wanted = sorted({s for s in shas if _HEX40.fullmatch(s)})
        if not wanted:
            return set()
        checked = self._git("cat-file", "--batch-check", input="".join(f"{s}\n" for s in wanted))
        return {line.split()[0] for line in checked.splitlines() if line.endswith(" missing")}

    # -- reads for gc
    def commit_trees(self, tips: Iterable[str]) -> dict[str, str]:
        """Every commit reachable from the commit (or tag) shas ``tips`` -> its root tree sha."""
        wanted = sorted({t for t in tips if _HEX40.fullmatch(t)})
        if not wanted:
            return {}
        out = self._git("rev-list", "--format=%T", "--stdin", input="\n".join(wanted) + "\n")
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

    def worktree_files(self, worktree: Path, pathspecs: Iterable[str]) -> list[str]:
        """Files under ``worktree`` matching ``pathspecs`` that Git tracks or would track
        (untracked ones too; ignored ones not), relative paths."""
        out = self._git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *pathspecs,
                       env={"GIT_WORK_TREE": str(worktree)}, cwd=Path(worktree))
        return sorted({p for p in out.split("\0") if p})

    def blob(self, sha: str) -> bytes | None:
        """A blob's content by sha, or None when it is missing or not a blob."""
        try:
            obj = self._repo[sha.encode()]
        except (KeyError, ValueError):
            return None
        return obj.as_raw_string() if isinstance(obj, Blob) else None

    # -- untrusted trees (self-contained; added for restoring dvclive files safely) ----------
    def list_tree(self, commit: str, path: str) -> list[TreeEntry]:
        """Every non-directory entry under directory ``path`` at ``commit``, unchecked.

        It keeps each entry's mode and reports symlinks, submodules and
        entries whose object is missing or of the wrong type, with names exactly as the tree
        holds them (``..``, ``/`` or non-UTF-8 bytes included): the caller decides what is safe.
        Empty when ``path`` is not a directory at ``commit``.
        """
        repo = self._repo
        try:
            obj = repo[repo[commit.encode()].tree]
            for part in path.strip("/").split("/"):
                assert isinstance(obj, Tree)
                mode, sha = obj[part.encode()]
                if not mode & 0o170000 == _DIR_MODE:
                    return []
                obj = repo[sha]
        except (KeyError, ValueError, AssertionError):
            return []
        if not isinstance(obj, Tree):
            return []
        found: list[TreeEntry] = []
        pending: list[tuple[str, Tree]] = [(path.strip("/"), obj)]
        while pending:
            prefix, tree = pending.pop()
            for item in tree.iteritems():
                name = f"{prefix}/{item.path.decode(errors='surrogateescape')}"
                child: Any = None
                with contextlib.suppress(KeyError, ValueError):
                    child = repo[item.sha]
                if item.mode & 0o170000 == _DIR_MODE and isinstance(child, Tree):
                    pending.append((name, child))
                else:
                    data = child.as_raw_string() if isinstance(child, Blob) else None
                    found.append(TreeEntry(name, item.mode, item.sha.decode(), data))
        return found

