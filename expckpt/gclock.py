"""A reader/writer lock between checkpoint writers (shared) and ``expckpt gc`` (exclusive).

A checkpoint holds it from adding its cache object until its ref exists, so gc never sees an
object whose ref is about to appear and deletes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["gc_lock"]


@contextlib.contextmanager
def gc_lock(git_dir: Path, *, exclusive: bool) -> Iterator[None]:
    path = Path(git_dir) / "expckpt" / "gc.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
