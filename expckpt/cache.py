"""The DVC 3 cache, as far as checkpoints need it: put, check, hash and drop file objects.

Layout (DVC 3): ``<cache>/files/md5/<md5[:2]>/<md5[2:]>``, objects read-only. Every object
expckpt adds is appended to a log in the Git directory, so ``expckpt gc`` only ever removes
objects that expckpt wrote.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from expckpt.atomic import TEMP_MARK, fsync_dir, md5_file
from expckpt.errors import CorruptCheckpointError, StorageError
from expckpt.text import terminal_safe

__all__ = ["DvcCache"]

_MD5 = re.compile(r"[0-9a-f]{32}")


class DvcCache:
    """A DVC cache directory plus expckpt's log of the objects it wrote there."""

    def __init__(self, root: Path, written_log: Path) -> None:
        self.root = Path(root)
        self.written_log = Path(written_log)

    @classmethod
    def for_project(cls, dvc_root: Path, git_dir: Path) -> DvcCache:
        """The cache ``dvc`` itself would use in ``dvc_root`` (honours ``cache.dir``)."""
        root = Path(dvc_root) / ".dvc" / "cache"
        for name in ("config", "config.local"):
            parser = configparser.ConfigParser()
            with contextlib.suppress(configparser.Error, OSError):
                parser.read(Path(dvc_root) / ".dvc" / name)
                if parser.has_option("cache", "dir"):
                    root = (Path(dvc_root) / ".dvc" / parser.get("cache", "dir")).resolve()
        return cls(root, Path(git_dir) / "expckpt" / "cache-objects.log")

    def object_path(self, md5: str) -> Path:
        """Where the object ``md5`` lives; refuses anything but an MD5 (32 lowercase hex digits).

        The hash comes from Git-sourced records and logs: a crafted one (``../../..``) must not
        make ``verify`` hash, or ``gc`` delete, a file outside the cache.
        """
        if not isinstance(md5, str) or not _MD5.fullmatch(md5):
            shown = repr(md5) if len(repr(md5)) <= 60 else f"{repr(md5)[:57]}..."
            raise CorruptCheckpointError(
                f"{terminal_safe(shown)} is not a DVC md5 (32 lowercase hex digits), so it names no"
                " cache object; the record or log holding it is damaged or crafted:"
                " run `expckpt verify --all` to find it"
            )
        return self.root / "files" / "md5" / md5[:2] / md5[2:]

    def has(self, md5: str) -> bool:
        return self.object_path(md5).is_file()

    def add(self, src: Path, md5: str, size: int) -> Path:
        """Put the file ``src`` (whose hash is ``md5``) in the cache; a no-op if present.

        Hard-links when possible (no copy), else copies through a temp file; either way the
        object appears under its final name only when complete.
        """
        dest = self.object_path(md5)
        if dest.is_file() and dest.stat().st_size == size:
            return dest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{TEMP_MARK}{dest.name}.{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            self._log_written(md5, size)
        except OSError as exc:
            with contextlib.suppress(OSError, UnboundLocalError):
                tmp.unlink()
            raise StorageError(
                f"could not add {src} to the DVC cache at {self.root}: {exc.strerror or exc};"
                " free some space and run again; the previous checkpoint is intact",
                path=dest,
            ) from exc
        return dest

    def _log_written(self, md5: str, size: int) -> None:
        self.written_log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.written_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{md5} {size}\n".encode())
        finally:
            os.close(fd)

    def written_objects(self) -> dict[str, int]:
        """Objects expckpt has added to this cache (md5 -> size), present or not."""
        found: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.written_log.read_text().splitlines():
                md5, _, size = line.partition(" ")
                if len(md5) == 32 and size.isdigit():
                    found[md5] = int(size)
        return found

    def verify(self, md5: str) -> str | None:
        """``None`` if the object exists with the right hash, else what is wrong."""
        path = self.object_path(md5)
        if not path.is_file():
            return "missing from the cache"
        actual, _ = md5_file(path)
        return None if actual == md5 else f"corrupt (content hashes to {actual})"

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
        """Copy an object to ``dest`` atomically (the workspace copy stays writable)."""
        from expckpt.atomic import atomic_writer

        src = self.object_path(md5)
        with atomic_writer(dest) as (handle, _), open(src, "rb") as source:
            shutil.copyfileobj(source, handle, 1 << 22)

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        base = self.root / "files" / "md5"
        if not base.is_dir():
            return
        for sub in base.iterdir():
            if len(sub.name) == 2 and sub.is_dir():
                for obj in sub.iterdir():
                    if TEMP_MARK not in obj.name:
                        yield sub.name + obj.name, obj
