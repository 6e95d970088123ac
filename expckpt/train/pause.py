"""Pausing at the next batch boundary: SIGTERM, SIGUSR1 (``checkpoint.pause_signals``) or ``expckpt stop``.

Clusters give notice before they kill (SLURM ``--signal=USR1@90``, Kubernetes' SIGTERM and
grace period, spot VMs' 30 s to 2 min). A pause request only sets a flag; the training loop
asks ``Checkpointer.pause_point(state)`` (``live.pause_point()``) between batches, and the
checkpointer's ``save`` at each step boundary: the state at that point is saved, published as a
checkpoint marked ``paused``, and the run exits with ``PAUSED_EXIT`` (75, EX_TEMPFAIL: "try
again"). A second pause signal changes nothing (the save under way finishes untouched). If no
boundary is reached within ``checkpoint.pause_deadline`` seconds, the run exits at once with
128 + the signal number: the last complete checkpoint is intact, because a checkpoint becomes
visible only when its ref moves, the last thing a save does.

A paused run also leaves ``.dvc/tmp/expckpt/paused`` (the checkpoint's name), removed when the
next run starts: ``dvc exp run`` exits 255 whatever its stage's status, so a job script tests
that file to decide whether to requeue.

``expckpt stop [exp]`` leaves a request file under ``$DVC_ROOT/.dvc/tmp/expckpt/stop/``
(``@all`` without a name); a run honours files written after it started, so a request with
no run going does not pause the next one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from expckpt.store.refs import validate_exp_name

__all__ = ["PAUSED_EXIT", "PauseRequest", "TrainingPaused", "paused_mark", "request_stop", "stop_dir"]

PAUSED_EXIT = 75
"""Exit status of a paused run (sysexits' EX_TEMPFAIL): a checkpoint at the pause point was
published; ``dvc exp apply <exp>@<step> && dvc exp run`` (or rerunning the job) continues it."""
_ALL = "@all"


class TrainingPaused(SystemExit):
    """The run paused: a checkpoint at the pause point was published; exit status ``PAUSED_EXIT``."""

    def __init__(self, reason: str) -> None:
        super().__init__(PAUSED_EXIT)
        self.reason = reason


def stop_dir(root: Path) -> Path:
    """Where ``expckpt stop`` leaves its requests in the project at ``root``."""
    return root / ".dvc" / "tmp" / "expckpt" / "stop"


def paused_mark(root: Path) -> Path:
    """The file a paused run leaves (its checkpoint's name) and the next run removes: a job
    script tests it to requeue (``dvc exp run`` exits 255 for any failed stage)."""
    return root / ".dvc" / "tmp" / "expckpt" / "paused"


def request_stop(root: Path, exp: str | None) -> Path:
    """Ask the run of ``exp`` (every run in the project when None) to pause; returns the file."""
    name = _ALL if exp is None else validate_exp_name(exp)
    folder = stop_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"{os.getpid()} {time.time():.3f}\n")
    return path


class PauseRequest:
    """Whether a pause was asked for, by a signal or a stop file, and the deadline that follows."""

    def __init__(
        self, signals: tuple[str, ...], deadline: float, root: Path | None, exp: str | None, describe: Callable[[], str]
    ) -> None:
        self.signals = signals
        self.deadline = deadline
        self._root = root
        self._files = [] if root is None else [stop_dir(root) / _ALL] + ([stop_dir(root) / exp] if exp else [])
        self._describe = describe
        self._started = time.time()
        self._previous: dict[int, object] = {}
        self._timer: threading.Timer | None = None
        self._exit_status = 128 + signal.SIGTERM
        self.reason: str | None = None

    def install(self) -> None:
        """Take over the pause signals (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        self.done()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            os.write(2, f"expckpt: {name}: already pausing ({self.reason}); exiting within the deadline\n".encode())
            return
        os.write(2, f"expckpt: {name}: pausing at the next batch boundary (at most {self.deadline:g} s)\n".encode())
        self._start(name, 128 + signum)

    def _start(self, reason: str, status: int) -> None:
        self.reason = reason
        self._exit_status = status
        self._timer = threading.Timer(self.deadline, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        os.write(
            2,
            f"expckpt: no batch boundary within {self.deadline:g} s of {self.reason}; exiting now;"
            f" {self._describe()}\n".encode(),
        )
        os._exit(self._exit_status)

    @property
    def requested(self) -> str | None:
        """Why training should pause now (``"SIGUSR1"``, ``"expckpt stop"``), or None."""
        if self.reason is None:
            for path in self._files:
                try:
                    if path.stat().st_mtime >= self._started:
                        self._start("expckpt stop", 128 + signal.SIGTERM)
                        break
                except OSError:
                    continue
        return self.reason

    def mark(self, checkpoint: str) -> None:
        """Leave ``paused_mark`` naming the pause's checkpoint (in a DVC project only)."""
        if self._root is not None and (self._root / ".dvc").is_dir():
            mark = paused_mark(self._root)
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(f"{checkpoint}\n")

    def clear_mark(self) -> None:
        """A run starts: the pause it may continue is being continued."""
        if self._root is not None:
            try:
                paused_mark(self._root).unlink()
            except OSError:
                pass

    def done(self) -> None:
        """The pause checkpoint is published (or training ended): no deadline any more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.reason == "expckpt stop" and len(self._files) > 1:
            try:
                self._files[1].unlink()
            except OSError:
                pass
