"""Directory checkpoint outputs: DVC's ``.dir`` manifest, and publishing a directory of files.

A checkpoint output may be a directory (``- ckpt/: {checkpoint: true, persist: true}``). DVC
caches it as one object per file plus a ``<md5>.dir`` JSON manifest listing them; its dvc.lock
entry is ``md5: <md5>.dir`` with ``size`` and ``nfiles``. The manifest and its hash are built by
dvc_data's own ``Tree``, so they are byte for byte what ``dvc commit`` would write, and a file
whose bytes did not change since the last checkpoint is the same cache object: a frozen backbone
is stored once.

``WrittenDir`` is the directory counterpart of ``WrittenFile``: complete temp files beside their
final names (only for files that changed), and the hash of the whole directory. An integration
that writes its own files (``torch.distributed.checkpoint``) hands over a finished directory with
``WrittenDir.from_complete``; expckpt hashes and publishes it the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expckpt.serialize.atomic import TEMP_MARK, WrittenFile, fsync_dir, md5_file

__all__ = [
    "DIR_SUFFIX",
    "FileStat",
    "UnsafeManifestError",
    "WrittenDir",
    "build_manifest",
    "hash_dir",
    "is_dir_hash",
    "output_stat",
    "parse_manifest",
]

DIR_SUFFIX = ".dir"
_FILE_MD5 = re.compile(r"[0-9a-f]{32}")

FileStat = tuple[str, int, int, int]
"""``(md5, size, mtime_ns, inode)`` of one file inside a directory output."""


class UnsafeManifestError(ValueError):
    """A ``.dir`` manifest names a path outside its directory (``..``, absolute, ``\\``, NUL)."""

    def __init__(self, relpath: str) -> None:
        super().__init__(f"unsafe path {relpath!r} in a .dir manifest")
        self.relpath = relpath


def _unsafe_relpath(rel: str) -> bool:
    parts = rel.split("/")
    return (
        rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or any(p in ("", ".", "..") for p in parts)
        or (len(rel) > 1 and rel[1] == ":")
    )  # `C:...`: a drive on Windows


def is_dir_hash(md5: str) -> bool:
    return md5.endswith(DIR_SUFFIX)


def build_manifest(entries: Mapping[str, tuple[str, int]]) -> tuple[str, bytes]:
    """``(hash, manifest bytes)`` of a directory whose files are ``relpath -> (md5, size)``,
    as dvc_data's ``Tree`` computes them (the hash ends in ``.dir``)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for rel, (md5, size) in entries.items():
        tree.add(tuple(rel.split("/")), Meta(size=size), HashInfo("md5", md5))
    tree.digest()
    return str(tree.hash_info.value), tree.as_bytes()


def parse_manifest(data: bytes) -> dict[str, str]:
    """``relpath -> md5`` of a ``.dir`` manifest (untrusted input: malformed raises ValueError)."""
    import json

    raw = json.loads(data)
    if not isinstance(raw, list):
        raise ValueError("a .dir manifest is a JSON list")
    found: dict[str, str] = {}
    for entry in raw:
        rel, md5 = (entry.get("relpath"), entry.get("md5")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(rel, str) and isinstance(md5, str) and _FILE_MD5.fullmatch(md5)):
            raise ValueError(f"bad .dir manifest entry {entry!r}")
        if _unsafe_relpath(rel):
            raise UnsafeManifestError(rel)
        found[rel] = md5
    return found


def _walk(path: Path) -> list[str]:
    """Files under ``path`` (posix relpaths), skipping expckpt's temp files."""
    found = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in names:
            if TEMP_MARK not in name:
                found.append(Path(root, name).relative_to(path).as_posix())
    return sorted(found)


def hash_dir(path: Path, known: Mapping[str, FileStat] | None = None) -> tuple[str, int, int, dict[str, FileStat]]:
    """``(hash, size, nfiles, per-file stats)`` of the directory ``path``; a file whose stat is in
    ``known`` (the session note's) is not read again."""
    known = known or {}
    stats: dict[str, FileStat] = {}
    for rel in _walk(path):
        st = os.stat(path / rel)
        prev = known.get(rel)
        if prev is not None and tuple(prev[1:]) == (st.st_size, st.st_mtime_ns, st.st_ino):
            stats[rel] = tuple(prev)  # type: ignore[assignment]
        else:
            md5, size = md5_file(path / rel)
            stats[rel] = (md5, size, st.st_mtime_ns, st.st_ino)
    md5, _ = build_manifest({rel: (s[0], s[1]) for rel, s in stats.items()})
    return md5, sum(s[1] for s in stats.values()), len(stats), stats


def output_stat(path: Path) -> tuple[Any, ...] | None:
    """What says a checkpoint output changed: a file's ``(size, mtime_ns, inode)``, a
    directory's ``((relpath, size, mtime_ns, inode), ...)``, None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not path.is_dir():
        return st.st_size, st.st_mtime_ns, st.st_ino
    found = []
    for rel in _walk(path):
        with contextlib.suppress(FileNotFoundError):
            s = os.stat(path / rel)
            found.append((rel, s.st_size, s.st_mtime_ns, s.st_ino))
    return tuple(found)


@dataclass(frozen=True)
class WrittenDir:
    """A directory checkpoint ready to publish: temp files for what changed, and its hash."""

    dest: Path
    md5: str
    """The ``<md5>.dir`` hash of the whole directory."""
    size: int
    nfiles: int
    manifest: bytes
    entries: Mapping[str, tuple[str, int]]
    """Every file of the directory: ``relpath -> (md5, size)``."""
    changed: Mapping[str, WrittenFile] = field(default_factory=dict)
    """Files to rename into place (the rest are already there with the right bytes)."""

    @classmethod
    def from_files(
        cls, dest: Path, entries: Mapping[str, tuple[str, int]], changed: Mapping[str, WrittenFile]
    ) -> WrittenDir:
        md5, manifest = build_manifest(entries)
        return cls(
            dest=Path(dest),
            md5=md5,
            size=sum(s for _, s in entries.values()),
            nfiles=len(entries),
            manifest=manifest,
            entries=dict(entries),
            changed=dict(changed),
        )

    @classmethod
    def from_complete(cls, dest: Path, known: Mapping[str, FileStat] | None = None) -> WrittenDir:
        """A directory whose files are already complete in place (written by e.g.
        ``torch.distributed.checkpoint``): hash it; publishing then only caches and commits it."""
        _, _, _, stats = hash_dir(Path(dest), known)
        return cls.from_files(Path(dest), {rel: (s[0], s[1]) for rel, s in stats.items()}, {})

    def sources(self) -> dict[str, Path]:
        """Where each file's bytes are now (temp file, or the file already in place)."""
        return {rel: self.changed[rel].tmp if rel in self.changed else self.dest / rel for rel in self.entries}

    def publish(self) -> None:
        """Rename each changed file into place, then delete files the manifest does not list.

        Not one atomic step: a crash part-way leaves a mix that matches no checkpoint, which
        resuming rolls back to the last complete one (``expckpt.train.resume``)."""
        parents = set()
        for written in self.changed.values():
            written.dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written.tmp, written.dest)
            parents.add(written.dest.parent)
        for rel in _walk(self.dest):
            if rel not in self.entries:
                with contextlib.suppress(FileNotFoundError):
                    (self.dest / rel).unlink()
        for parent in parents:
            fsync_dir(parent)

    def discard(self) -> None:
        for written in self.changed.values():
            written.discard()

    def stats(self) -> dict[str, FileStat]:
        """Per-file stats of the published directory, for the session note."""
        found: dict[str, FileStat] = {}
        for rel, (md5, size) in self.entries.items():
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.dest / rel)
                found[rel] = (md5, size, st.st_mtime_ns, st.st_ino)
        return found
