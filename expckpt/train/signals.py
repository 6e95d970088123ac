"""Ctrl+C and SIGTERM during training: finish the checkpoint in progress, then stop.

Signals in ``checkpoint.pause_signals`` (SIGTERM by default) pause instead: see ``expckpt.train.pause``.

The first signal stops training at once, except inside a checkpoint, which is finished first
(in asynchronous mode, every checkpoint already handed to the background writer).
A second signal exits immediately; that is still safe, because a checkpoint becomes visible
only when its ref moves, and that is the last thing it does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from expckpt.train.pause import PauseRequest

__all__ = ["GracefulStop", "TrainingInterrupted"]

_NAMES: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal; the exit status is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class GracefulStop:
    """Installs SIGINT/SIGTERM handlers (main thread only) for the duration of training."""

    def __init__(
        self,
        describe: Callable[[], str],
        settle: Callable[[], None] | None = None,
        *,
        pause: PauseRequest | None = None,
    ) -> None:
        self._describe = describe
        self._pause = pause
        """Takes over its signals (``checkpoint.pause_signals``) while installed."""
        self._settle = settle
        self._busy = 0
        self.pending: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Take over SIGINT/SIGTERM (main thread only; a second call changes nothing)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum, name in _NAMES.items():
            if self._pause is None or name not in self._pause.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        if self._pause is not None:
            self._pause.install()

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self._pause is not None:
            self._pause.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = _NAMES.get(signum, str(signum))
        if self.pending is not None:
            os.write(2, f"expckpt: second {name}: exiting now; {self._describe()}\n".encode())
            os._exit(128 + signum)
        self.pending = signum
        if self._busy:
            os.write(
                2,
                f"expckpt: {name}: finishing the checkpoint in progress, then stopping (press again to exit now)\n".encode(),
            )
            return
        self._stop()

    def _stop(self) -> None:
        signum = self.pending
        assert signum is not None
        if self._settle is not None:
            # Checkpoints still being written in the background are finished first, so the
            # line below names the checkpoint that really is the last; a second signal while
            # waiting exits at once.
            self._busy += 1
            try:
                self._settle()
            finally:
                self._busy -= 1
        print(f"expckpt: stopped by {_NAMES.get(signum, signum)}; {self._describe()}", file=sys.stderr, flush=True)
        raise TrainingInterrupted(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a first signal must not cut short (writing a checkpoint)."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
        if self.pending is not None and not self._busy:
            self._stop()
