"""Reads of objects, trees and history for ``GitStore``, through dulwich, in-process.

A mixin: ``GitStore`` provides ``_repo`` (a dulwich ``Repo``). Everything here reads what Git
holds as untrusted: a missing or malformed object is ``None`` or skipped, never an exception
from dulwich's parser, and tree names and modes are returned as stored for callers to judge.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dulwich.objects import Blob, Commit, Tree

from expckpt.errors import ProjectError

__all__ = ["HEX40", "TreeEntry", "TreeReads"]

HEX40 = re.compile(r"[0-9a-f]{40}")
_DIR_MODE = 0o040000
_TYPE_MASK = 0o170000
_COMMIT, _BLOB, _TAG = 1, 3, 4
_TYPES = {b"commit": _COMMIT, b"tree": 2, b"blob": _BLOB, b"tag": _TAG}


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a tree listing: path (``/``-joined as stored), Git mode, object id, and the
    content when the object is a blob (else ``None``)."""

    path: str
    mode: int
    sha: str
    data: bytes | None


class TreeReads:
    """Object, tree and history reads (mixed into ``GitStore``)."""

    _repo: Any

    # -- objects --------------------------------------------------------------------------
    def _raw(self, sha: str) -> tuple[int, bytes] | None:
        """``(type number, raw content)`` of object ``sha``, or None when it is missing.

        A loose object is inflated here (Git's on-disk format: zlib of ``<type> <size>\\0``
        and the content): dulwich parses it into an object and serialises it back, four
        times the cost, which ``expckpt show`` pays per checkpoint. Packed ones, alternates
        and anything that does not inflate cleanly go through dulwich.
        """
        if not HEX40.fullmatch(sha):
            return None
        with contextlib.suppress(OSError, zlib.error, ValueError):
            with open(os.path.join(self._repo.object_store.path, sha[:2], sha[2:]), "rb") as file:
                data = zlib.decompress(file.read())
            header, _, body = data.partition(b"\0")
            kind, _, size = header.partition(b" ")
            if kind in _TYPES and size.isdigit() and int(size) == len(body):
                return _TYPES[kind], body
        try:
            return self._repo.object_store.get_raw(sha.encode())
        except (KeyError, ValueError):
            return None

    def missing_objects(self, shas: Iterable[str]) -> set[str]:
        """Which of the 40-hex ``shas`` this repository does not have."""
        return {s for s in shas if HEX40.fullmatch(s) and s.encode() not in self._repo.object_store}

    def has_commit(self, sha: str) -> bool:
        found = self._raw(sha)
        return found is not None and found[0] == _COMMIT

    def peel(self, sha: str) -> str:
        """The object an annotated tag (chain) ``sha`` names at last; any other sha as it is."""
        for _ in range(100):
            found = self._raw(sha)
            if found is None or found[0] != _TAG:
                break
            target = _header(found[1], b"object")
            if not target:
                break
            sha = target[0]
        return sha

    def commit_message(self, sha: str) -> str | None:
        """The message of commit ``sha`` (None if there is no such commit here)."""
        try:
            obj = self._repo[sha.encode()]
        except (KeyError, ValueError):
            return None
        return obj.message.decode("utf-8", "replace") if isinstance(obj, Commit) else None

    def commit_tree(self, commit: str) -> str:
        found = self._raw(commit)
        trees = _header(found[1], b"tree") if found and found[0] == _COMMIT else []
        if not trees:
            raise ProjectError(f"commit {commit[:12]!r} is missing from this repository")
        return trees[0]

    def commit_trees(self, tips: Iterable[str]) -> dict[str, str]:
        """Every commit reachable from the commit (or tag) shas ``tips`` -> its root tree sha.

        A missing tip is a ``ProjectError``, one naming a tree or blob is skipped, a missing
        parent ends that line of history (a shallow clone). Each commit is parsed once per
        store: gc asks again after every drop.
        """
        memo: dict[str, tuple[str, list[str]]] = self.__dict__.setdefault("_commit_memo", {})
        trees: dict[str, str] = {}
        pending = [self.peel(t) for t in dict.fromkeys(tips) if HEX40.fullmatch(t)]
        wanted = set(pending)
        while pending:
            sha = pending.pop()
            if sha in trees:
                continue
            if sha not in memo:
                found = self._raw(sha)
                if found is None and sha in wanted:
                    raise ProjectError(f"commit {sha[:12]!r} is missing from this repository")
                if found is None or found[0] != _COMMIT:  # a tag naming a tree or blob
                    continue
                tree = _header(found[1], b"tree")
                memo[sha] = (tree[0] if tree else "", _header(found[1], b"parent"))
            trees[sha], parents = memo[sha]
            pending.extend(parents)
        return trees

    def blob(self, sha: str) -> bytes | None:
        """A blob's content by sha, or None when it is missing or not a blob."""
        found = self._raw(sha)
        return found[1] if found and found[0] == _BLOB else None

    # -- trees ----------------------------------------------------------------------------
    def _tree_at(self, commit: str, path: str) -> Any:
        """The object at ``path`` (``/``-separated, ``""``: the root) in ``commit``, or None."""
        try:
            obj = self._repo[self.commit_tree(commit).encode()]
            for part in filter(None, path.strip("/").split("/")):
                if not isinstance(obj, Tree):
                    return None
                _, sha = obj[part.encode()]
                obj = self._repo[sha]
        except (KeyError, ValueError, ProjectError):
            return None
        return obj

    def read_file(self, commit: str, path: str) -> bytes | None:
        """The content of ``path`` at ``commit``, or None."""
        obj = self._tree_at(commit, path)
        return obj.as_raw_string() if isinstance(obj, Blob) else None

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
        except (KeyError, ValueError):
            obj = None
        if isinstance(obj, Tree):
            for entry in obj.iteritems():
                name = entry.path.decode(errors="surrogateescape")
                if entry.mode & _TYPE_MASK == _DIR_MODE:
                    if name not in skip_dirs:
                        for sub, sha in self.files_in_tree(entry.sha.decode(), match, skip_dirs).items():
                            found[f"{name}/{sub}"] = sha
                elif entry.mode & _TYPE_MASK == 0o100000 and match(name):
                    found[name] = entry.sha.decode()
        memo[key] = found
        return found

    def list_tree(self, commit: str, path: str) -> list[TreeEntry]:
        """Every non-directory entry under directory ``path`` at ``commit``, unchecked.

        It keeps each entry's mode and reports symlinks, submodules and entries whose object is
        missing or of the wrong type, with names exactly as the tree holds them (``..``, ``/``
        or non-UTF-8 bytes included): the caller decides what is safe. Empty when ``path`` is
        not a directory at ``commit``.
        """
        obj = self._tree_at(commit, path) if path.strip("/") else None
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
                    child = self._repo[item.sha]
                if item.mode & _TYPE_MASK == _DIR_MODE and isinstance(child, Tree):
                    pending.append((name, child))
                else:
                    data = child.as_raw_string() if isinstance(child, Blob) else None
                    found.append(TreeEntry(name, item.mode, item.sha.decode(), data))
        return found


def _header(raw: bytes, field: bytes) -> list[str]:
    """The values of header ``field`` (``tree``, ``parent``, ``object``) that are 40-hex shas."""
    head = raw.split(b"\n\n", 1)[0]
    values = [
        line[len(field) + 1 :].decode(errors="replace") for line in head.split(b"\n") if line.startswith(field + b" ")
    ]
    return [v for v in values if HEX40.fullmatch(v)]
