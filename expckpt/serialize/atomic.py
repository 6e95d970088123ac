"""Atomic file writes: temp file in the same directory, fsync, rename; the name moves last.

(``HashingWriter`` was removed: nothing used it; ``md5_file`` hashes a written file.)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from expckpt.errors import StorageError

__all__ = ["TEMP_MARK", "WrittenFile", "atomic_write_bytes", "atomic_writer", "fsync_dir", "md5_file"]

TEMP_MARK = ".expckpt-tmp-"
"""Every temp file expckpt writes has this in its name, so none is mistaken for a checkpoint."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_FULL = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file-size limit",
}
"""Write errors that mean "out of room": each gets the same advice."""


def _storage_error(path: Path, exc: OSError) -> StorageError:
    """One clear error for a failed write; running out of room (full disk, quota, file-size
    limit) says so and what to do."""
    if exc.errno in _FULL:
        return StorageError(
            f"{_FULL[exc.errno]} while writing {path}; free some space"
            " (e.g. `expckpt gc --workspace`) and run again; the previous checkpoint is intact",
            path=path,
        )
    return StorageError(f"could not write {path}: {exc.strerror or exc}", path=path)


@contextlib.contextmanager
def atomic_writer(path: Path, *, durable: bool = True) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield ``(file, temp_path)``; on clean exit the temp file is fsynced and renamed to ``path``.

    On any error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_MARK}{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _storage_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle, tmp_path
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):
            raise _storage_error(path, exc) from exc
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, durable=durable) as (handle, _):
        handle.write(data)


def md5_file(path: Path, chunk: int = 1 << 22) -> tuple[str, int]:
    """Return ``(md5 hex, size)`` of a file, as DVC 3 hashes it."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class WrittenFile:
    """A complete, fsynced temp file beside its final name, and its DVC hash."""

    tmp: Path
    dest: Path
    md5: str
    size: int

    def publish(self) -> None:
        """Rename the temp file onto its final name (atomic) and make that durable."""
        os.replace(self.tmp, self.dest)
        fsync_dir(self.dest.parent)

    def discard(self) -> None:
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass
