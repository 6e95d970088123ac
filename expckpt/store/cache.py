"""The DVC 3 cache, as far as checkpoints need it: put, check, hash and drop file objects.

Layout (DVC 3): ``<cache>/files/md5/<md5[:2]>/<md5[2:]>``, objects read-only. Where the cache is
and how files get into it come from DVC's own config, read by DVC (project, local, global and
system levels: ``cache.dir``, ``cache.type``, ``cache.shared``). Every object expckpt adds is
appended to a log in the Git directory, so ``expckpt gc`` only ever removes objects that expckpt
wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from expckpt.serialize.atomic import TEMP_MARK, atomic_write_bytes, fsync_dir, md5_file
from expckpt.serialize.dirout import DIR_SUFFIX, WrittenDir, is_dir_hash, parse_manifest
from expckpt.errors import CorruptCheckpointError, ProjectError, StorageError
from expckpt.text import terminal_safe

__all__ = ["CacheSettings", "DvcCache"]

DEFAULT_LINK_TYPES = ("reflink", "copy")
"""DVC's default ``cache.type``."""

_UNSUPPORTED = {errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.ENOTTY, errno.ENOSYS, errno.EINVAL, errno.EAGAIN}
"""Errors that make DVC try the next link type (``dvc_objects.fs.generic._try_links``)."""


@dataclass(frozen=True)
class CacheSettings:
    """The cache as DVC sees it."""

    root: Path
    """The cache directory (``dvc cache dir``); objects live under ``files/md5``."""
    link_types: tuple[str, ...] = DEFAULT_LINK_TYPES
    """``cache.type`` in order of preference: how the checkpoint file and its object relate."""
    dir_mode: int | None = None
    """Mode of new cache directories: ``0o2775`` with ``cache.shared = group``, else the umask's."""

    @classmethod
    def from_dvc(cls, dvc_root: Path) -> CacheSettings:
        """Ask DVC (``Repo(...).cache``), which merges its config levels and resolves paths."""
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        try:
            with Repo(os.fspath(dvc_root)) as repo:
                odb = repo.cache.local
                shared = repo.config["cache"].get("shared")
                return cls(
                    root=Path(odb.path).parent.parent,
                    link_types=tuple(odb.cache_types),
                    dir_mode=0o2775 if shared == "group" else None,
                )
        except DvcException as exc:
            raise ProjectError(
                f"DVC cannot read its cache settings in {dvc_root}: {exc}; check `dvc config --list`",
                path=dvc_root,
            ) from exc


_MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")


class DvcCache:
    """A DVC cache directory plus expckpt's log of the objects it wrote there."""

    def __init__(
        self,
        root: Path | None,
        written_log: Path,
        *,
        link_types: tuple[str, ...] = DEFAULT_LINK_TYPES,
        dir_mode: int | None = None,
        dvc_root: Path | None = None,
    ) -> None:
        self.written_log = Path(written_log)
        self._settings = None if root is None else CacheSettings(Path(root), tuple(link_types), dir_mode)
        self._dvc_root = dvc_root

    @classmethod
    def for_project(cls, dvc_root: Path, git_dir: Path) -> DvcCache:
        """The cache ``dvc`` itself would use in ``dvc_root``; DVC's config is read on first use,
        so commands that never touch the cache (``expckpt show``) do not import DVC."""
        return cls(None, Path(git_dir) / "expckpt" / "cache-objects.log", dvc_root=Path(dvc_root))

    @property
    def settings(self) -> CacheSettings:
        if self._settings is None:
            assert self._dvc_root is not None
            self._settings = CacheSettings.from_dvc(self._dvc_root)
        return self._settings

    @property
    def root(self) -> Path:
        return self.settings.root

    @property
    def link_types(self) -> tuple[str, ...]:
        return self.settings.link_types

    def object_path(self, md5: str) -> Path:
        """Where the object ``md5`` lives; refuses anything but an MD5 (32 lowercase hex digits,
        ``.dir`` after a directory's manifest).

        The hash comes from Git-sourced records and logs: a crafted one (``../../..``) must not
        make ``verify`` hash, or ``gc`` delete, a file outside the cache.
        """
        if not isinstance(md5, str) or not _MD5.fullmatch(md5):
            shown = repr(md5) if len(repr(md5)) <= 60 else f"{repr(md5)[:57]}..."
            raise CorruptCheckpointError(
                f"{terminal_safe(shown)} is not a DVC md5 (32 lowercase hex digits, + .dir), so it names no"
                " cache object; the record or log holding it is damaged or crafted:"
                " run `expckpt verify --all` to find it"
            )
        return self.root / "files" / "md5" / md5[:2] / md5[2:]

    def has(self, md5: str) -> bool:
        """Whether the object is there (for a ``.dir``: its manifest and every file it lists)."""
        if not self.object_path(md5).is_file():
            return False
        if not is_dir_hash(md5):
            return True
        try:
            return all(self.object_path(m).is_file() for m in self.manifest(md5).values())
        except (OSError, ValueError):
            return False

    def add(self, src: Path, md5: str, size: int) -> Path:
        """Put the file ``src`` (whose hash is ``md5``) in the cache; a no-op if present.

        ``src`` is the checkpoint's temp file, renamed onto the workspace file afterwards. How the
        object relates to it follows ``cache.type``, tried in order as DVC does: ``hardlink``
        shares the inode (an in-place write to the workspace file then changes the object),
        ``reflink`` shares blocks copy-on-write, ``copy`` (also used for ``symlink``: the
        checkpoint file is published by rename, not checked out) is independent. The object
        appears under its final name only when complete.
        """
        dest = self.object_path(md5)
        if dest.is_file() and dest.stat().st_size == size:
            return dest
        tmp = dest.with_name(f"{TEMP_MARK}{dest.name}.{os.getpid()}")
        try:
            self._makedirs(dest.parent)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            self._link_or_copy(src, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            self._log_written(md5, size)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(
                f"could not add {src} to the DVC cache at {self.root}: {exc.strerror or exc};"
                " free some space and run again; the previous checkpoint is intact",
                path=dest,
            ) from exc
        return dest

    def _makedirs(self, path: Path) -> None:
        mode = self.settings.dir_mode
        if mode is None:
            path.mkdir(parents=True, exist_ok=True)
            return
        for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
            with contextlib.suppress(FileExistsError):
                missing.mkdir()
                os.chmod(missing, mode)  # mkdir's mode is masked by the umask; DVC's is not

    def _link_or_copy(self, src: Path, tmp: Path) -> str:
        for kind in self.link_types:
            if kind in ("copy", "symlink"):
                break
            try:
                if kind == "hardlink":
                    os.link(src, tmp)
                elif kind == "reflink":
                    from dvc_objects.fs.system import reflink

                    reflink(os.fspath(src), os.fspath(tmp))
                else:
                    continue
                return kind
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        return "copy"

    def _log_written(self, md5: str, size: int) -> None:
        self.written_log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.written_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{md5} {size}\n".encode())
        finally:
            os.close(fd)

    def add_dir(self, written: WrittenDir) -> None:
        """Put a directory checkpoint in the cache: every file first, the ``.dir`` manifest last
        (DVC treats a directory as present when its manifest is)."""
        for rel, src in written.sources().items():
            md5, size = written.entries[rel]
            self.add(src, md5, size)
        dest = self.object_path(written.md5)
        if dest.is_file():
            return
        try:
            self._makedirs(dest.parent)
            atomic_write_bytes(dest, written.manifest)
            os.chmod(dest, 0o444)
        except (OSError, StorageError) as exc:
            raise StorageError(
                f"could not add the manifest of {written.dest} to the DVC cache at {self.root}: {exc};"
                " free some space and run again; the previous checkpoint is intact",
                path=dest,
            ) from exc
        self._log_written(written.md5, len(written.manifest))

    def manifest(self, md5: str) -> dict[str, str]:
        """``relpath -> md5`` of the cached ``.dir`` object ``md5``; raises OSError/ValueError."""
        return parse_manifest(self.object_path(md5).read_bytes())

    def expand(self, md5: str) -> set[str]:
        """``md5`` and, for a ``.dir`` object in the cache, every file it lists."""
        found = {md5}
        if is_dir_hash(md5):
            with contextlib.suppress(OSError, ValueError):
                found.update(self.manifest(md5).values())
        return found

    def written_objects(self) -> dict[str, int]:
        """Objects expckpt has added to this cache (md5 -> size), present or not."""
        found: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.written_log.read_text().splitlines():
                md5, _, size = line.partition(" ")
                if _MD5.fullmatch(md5) and size.isdigit():
                    found[md5] = int(size)
        return found

    def verify(self, md5: str) -> str | None:
        """``None`` if the object exists with the right hash, else what is wrong."""
        path = self.object_path(md5)
        if not path.is_file():
            return "missing from the cache"
        actual, _ = md5_file(path)
        if actual != md5.removesuffix(DIR_SUFFIX):
            return f"corrupt (content hashes to {actual})"
        if not is_dir_hash(md5):
            return None
        try:
            files = self.manifest(md5)
        except (OSError, ValueError) as exc:
            return f"an unreadable directory manifest ({exc})"
        for rel, file_md5 in sorted(files.items()):
            problem = self.verify(file_md5)
            if problem is not None:
                return f"a directory whose file {rel} (md5 {file_md5}) is {problem}"
        return None

    def remove(self, md5: str) -> int:
        """Delete one object; return the bytes freed (0 if it was not there)."""
        path = self.object_path(md5)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def checkout(self, md5: str, dest: Path) -> None:
        """Copy an object to ``dest`` atomically (the workspace copy stays writable); a ``.dir``
        object becomes the directory ``dest`` holding exactly its files."""
        from expckpt.serialize.atomic import atomic_writer

        if is_dir_hash(md5):
            files = self.manifest(md5)
            for rel, file_md5 in files.items():
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if not (target.is_file() and md5_file(target)[0] == file_md5):
                    self.checkout(file_md5, target)
            for root, _, names in os.walk(dest):
                for name in names:
                    full = Path(root, name)
                    if full.relative_to(dest).as_posix() not in files:
                        full.unlink()
            return
        src = self.object_path(md5)
        with atomic_writer(dest) as (handle, _), open(src, "rb") as source:
            shutil.copyfileobj(source, handle, 1 << 22)
