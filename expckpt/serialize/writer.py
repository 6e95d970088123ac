"""Asynchronous checkpoint writing: stage the state now, publish it on a background thread.

``submit`` copies the state into reusable CPU buffers before training can change it (the trap
of pytorch #144657; see ``staging``: pinned buffers and non-blocking copies for CUDA tensors),
then serialises, hashes, caches and commits in a background thread, in order. The background
thread uses the same publishing path as synchronous mode, so its checkpoints are just as
crash-safe, and byte for byte the same files.

When a checkpoint is requested while earlier ones still hold every staging buffer (saving more
often than a publish takes), ``when_busy`` decides, as orbax and CheckFreq do, instead of letting
training block longer and longer:

* ``"wait"``: wait only until the oldest checkpoint is published and its buffers are free;
* ``"skip"``: do not take this checkpoint (``submit`` returns False); training goes on at once.

Either is said once per writer, through ``echo``.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from expckpt.serialize.staging import Staged, Stager

__all__ = ["WHEN_BUSY", "AsyncWriter"]

WHEN_BUSY = ("wait", "skip")
"""What ``AsyncWriter.submit`` does when every staging buffer is still in use."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class AsyncWriter:
    """Runs checkpoint jobs one at a time, in order, on a background thread.

    At most ``depth`` staged copies of the state exist at once (one being written, the rest
    waiting), so memory stays bounded: ``depth`` x the state, pinned for CUDA tensors.
    """

    def __init__(
        self,
        work: Callable[[Any], None],
        depth: int = 2,
        *,
        when_busy: str = "wait",
        echo: Callable[[str], None] = _stderr,
    ) -> None:
        if when_busy not in WHEN_BUSY:
            raise ValueError(f"when_busy must be one of {', '.join(WHEN_BUSY)}, got {when_busy!r}")
        self._work = work
        self._when_busy = when_busy
        self._echo = echo
        self._said = False
        self.waited_s = 0.0
        """Total time ``submit`` waited for a free staging buffer (``when_busy: wait``)."""
        self.skipped = 0
        """Checkpoints not taken because the writer was busy (``when_busy: skip``)."""
        self._free: queue.Queue[Stager] = queue.Queue()
        for _ in range(depth):
            self._free.put(Stager())
        self._jobs: queue.Queue[tuple[Any, Staged, Stager] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="expckpt-writer", daemon=True)
        self._thread.start()

    def submit(self, payload: Any, make_job: Callable[[Any], Any]) -> bool:
        """Stage ``payload`` now, publish ``make_job(copy)`` later; False if skipped as busy.

        Returns once CPU tensors are copied and CUDA copies are enqueued on their streams: the
        next optimizer step, enqueued after them, cannot change what is saved.
        """
        self.raise_error()
        try:
            stager = self._free.get_nowait()
        except queue.Empty:
            if self._when_busy == "skip":
                self.skipped += 1
                self._say(
                    "expckpt: skipped a checkpoint because the previous one is still being written"
                    " (checkpoint.when_busy: skip); later ones that come too soon are skipped silently"
                )
                return False
            start = time.perf_counter()
            stager = self._free.get()
            waited = time.perf_counter() - start
            self.waited_s += waited
            self._say(
                f"expckpt: training waited {waited * 1000:.0f} ms for the previous checkpoint to be written"
                " (checkpoint.when_busy: wait); save less often, or set checkpoint.when_busy: skip"
            )
        try:
            staged = stager.stage(payload)
            job = make_job(staged.state)
        except BaseException:
            self._free.put(stager)
            raise
        self._jobs.put((job, staged, stager))
        return True

    def _say(self, line: str) -> None:
        if not self._said:
            self._said = True
            self._echo(line)

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                self._jobs.task_done()
                return
            job, staged, stager = item
            try:
                if self._error is None:
                    staged.wait_ready()
                    self._work(job)
            except BaseException as exc:  # surfaced on the training thread
                self._error = exc
            finally:
                self._free.put(stager)
                self._jobs.task_done()

    def busy(self) -> bool:
        """Whether a checkpoint is still being written or waiting to be."""
        return self._jobs.unfinished_tasks > 0

    def drain(self) -> None:
        """Wait until every submitted checkpoint is published; re-raise a background failure."""
        self._jobs.join()
        self.raise_error()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
