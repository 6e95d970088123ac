"""A file object that ``torch.save`` streams into: each chunk is written and MD5-hashed at once.

Saving to memory first and then writing and hashing the whole buffer made a checkpoint cost
serialise + max(write, MD5) + fsync, with the whole file held in RAM once more. Here nothing is
gathered: ``torch.save`` calls ``write`` once per zip record (each tensor storage is one call
with a view of the tensor's own memory), the calling thread writes that chunk to the file while
a second thread folds it into the MD5 (DVC's hash; ``hashlib`` releases the GIL), and the kernel
is asked to start writing back every few MB so that the final fsync has little left to do. The
time approaches the slowest of serialising, writing + fsync and hashing, not their sum.

Chunks that are views of the state's own storages are handed to the hasher as they are (the
caller keeps the state unchanged until ``finish``); any other chunk (zip headers, the pickle,
a temporary) is copied first, because torch may reuse that memory once ``write`` returns.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import os
import queue
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["HashingStream"]

_SMALL = 1 << 16
"""Chunks below this are copied rather than looked up (headers, the pickle): cheaper to copy."""
_WRITEBACK_EVERY = 1 << 24
"""Start write-back of the file's dirty pages every 16 MB written."""
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: the final fsync does it all
        return None


_START_WRITEBACK = _sync_file_range()


def _address(view: memoryview) -> int | None:
    try:
        import numpy as np
    except ImportError:
        return None
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


class HashingStream:
    """Write-only file object over an open file descriptor; ``finish()`` gives ``(md5, size)``.

    ``stable`` lists ``(address, nbytes)`` of memory that stays unchanged until ``finish``
    returns (the CPU storages of the state being saved); chunks inside it are not copied.
    """

    def __init__(self, fd: int, stable: Iterable[tuple[int, int]] = (), *, writeback: bool = True) -> None:
        self._fd = fd
        spans = sorted((start, start + size) for start, size in stable if size)
        self._starts = [s for s, _ in spans]
        self._ends = [e for _, e in spans]
        self._writeback = writeback and _START_WRITEBACK is not None
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._chunks: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._hasher = threading.Thread(target=self._hash, name="expckpt-md5", daemon=True)
        self._hasher.start()
        self._closed = False
        self._flushed_to = 0
        self.size = 0

    # -- the file-object interface torch.save uses ------------------------------------------
    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        if n == 0:
            return 0
        if not self._is_stable(view):
            view = memoryview(bytes(view))
        self._chunks.put(view)
        offset = 0
        while offset < n:
            offset += os.write(self._fd, view[offset:])
        self.size += n
        if self._writeback and self.size - self._flushed_to >= _WRITEBACK_EVERY:
            _START_WRITEBACK(
                self._fd,
                ctypes.c_int64(self._flushed_to),
                ctypes.c_int64(self.size - self._flushed_to),
                _SYNC_FILE_RANGE_WRITE,
            )
            self._flushed_to = self.size
        return n

    def flush(self) -> None:
        """Nothing is buffered here; durability is ``finish(durable=True)``'s job."""

    def writable(self) -> bool:
        return True

    # -- completion -----------------------------------------------------------------------
    def finish(self, *, durable: bool) -> tuple[str, int]:
        """fsync (if ``durable``) while the hasher catches up; return ``(md5 hex, size)``."""
        self._stop()
        try:
            if durable:
                os.fsync(self._fd)
        finally:
            self._hasher.join()
        return self._md5.hexdigest(), self.size

    def abort(self) -> None:
        """Stop the hasher after a failed write (the caller removes the file)."""
        self._stop()
        self._hasher.join()

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._chunks.put(None)

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._md5.update(chunk)

    def _is_stable(self, view: memoryview) -> bool:
        if view.nbytes < _SMALL or not self._starts:
            return False
        address = _address(view)
        if address is None:
            return False
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and address + view.nbytes <= self._ends[i]
