"""Pushing checkpoints in the background while training goes on (``checkpoint.push``).

One thread and one queue per run. ``submit(record)`` only queues and returns; the thread takes
everything queued at once (a slow network coalesces checkpoints into one batch) and runs
``python -m expckpt.publish.remote`` for it, which skips checkpoints retention has dropped meanwhile and
uploads objects before refs. A failed attempt is retried with backoff (2 s, 4 s, ... at most
60 s); the first failure is said once, as one line, and a later success once more; nothing is
ever raised into training. ``close()`` waits a bounded time (``EXPCKPT_PUSH_WAIT`` seconds,
default 120) for the queue at the end of training and says so when it gives up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from expckpt.store.records import CheckpointRecord
from expckpt.publish.remote import REJECTED_EXIT, PushTarget
from expckpt.text import one_line

__all__ = ["Pusher"]

FIRST_BACKOFF_S = 2.0
MAX_BACKOFF_S = 60.0
ATTEMPT_TIMEOUT_S = 600.0
DEFAULT_WAIT_S = 120.0


def _wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get("EXPCKPT_PUSH_WAIT", DEFAULT_WAIT_S)))
    except ValueError:
        return DEFAULT_WAIT_S


class Pusher:
    """Pushes each submitted checkpoint to ``target`` from a background thread."""

    def __init__(self, target: PushTarget, root: Path, echo: Callable[[str], None] = print) -> None:
        self.target = target
        self.root = Path(root)
        self.echo = echo
        self.pushed: list[str] = []
        """Names pushed so far, in order (for tests and the final summary)."""
        self.attempts = 0
        """Push attempts (child processes) started so far."""
        self._pending: dict[str, CheckpointRecord] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._busy = False
        self._child: subprocess.Popen[str] | None = None
        self._failing = False
        self._last_reason = ""

    # -- the training side ----------------------------------------------------------------------
    def submit(self, record: CheckpointRecord) -> None:
        """Queue ``record`` for pushing; returns at once."""
        with self._cond:
            if self._closing:
                return
            self._pending[record.ref.ref] = record
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="expckpt-pusher", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def close(self, wait_s: float | None = None) -> bool:
        """Wait up to ``wait_s`` seconds for what is queued; True when everything went."""
        wait_s = _wait_s() if wait_s is None else wait_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            if self._thread is None:
                return True
            left = self._names(self._pending.values())
            if left:
                self.echo(f"expckpt: waiting up to {wait_s:g} s to push {left} to {self.target.git_remote}")
            deadline = time.monotonic() + wait_s
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.05, deadline - time.monotonic()))
            done = not self._pending and not self._busy
            if not done:
                left = self._names(self._pending.values())
                child = self._child
                self._pending.clear()
                self._cond.notify_all()  # wakes the thread from its backoff: nothing left, it ends
        if not done:
            if child is not None and child.poll() is None:
                child.kill()
            why = f" ({self._last_reason})" if self._last_reason else ""
            newest = max(left.split(", "), key=lambda n: int(n.rpartition("@")[2]))
            self.echo(
                f"expckpt: warning: gave up pushing {left} to {self.target.git_remote} after {wait_s:g} s{why};"
                f" the checkpoints are safe here: push later with `dvc exp push {self.target.git_remote} {newest}`"
            )
        if self._thread is not None:
            self._thread.join(timeout=5)
        return done

    # -- the thread -------------------------------------------------------------------------------
    @staticmethod
    def _names(records: Iterable[CheckpointRecord]) -> str:
        return ", ".join(r.name for r in sorted(records, key=lambda r: r.step))

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    self._cond.notify_all()
                    return
                batch = dict(self._pending)
                self._busy = True
            try:
                pushed, error, permanent = self._attempt(list(batch.values()))
            except Exception as exc:  # noqa: BLE001 - never let the thread die silently
                pushed, error, permanent = [], one_line(f"{type(exc).__name__}: {exc}"), False
            with self._cond:
                self._busy = False
                if error is None or permanent:
                    for ref, record in batch.items():
                        if self._pending.get(ref) is record:
                            del self._pending[ref]
                self._cond.notify_all()
            if error is None:
                self._succeeded(batch, pushed)
                backoff = FIRST_BACKOFF_S
                continue
            self._failed(batch, error, permanent)
            if permanent:
                continue
            with self._cond:  # back off; new checkpoints join the next attempt, close() starts it at once
                was_closing = self._closing
                until = time.monotonic() + (min(backoff, 5.0) if was_closing else backoff)
                while self._pending and self._closing == was_closing and (left := until - time.monotonic()) > 0:
                    self._cond.wait(timeout=left)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _attempt(self, records: list[CheckpointRecord]) -> tuple[list[str], str | None, bool]:
        """One child process for the batch: (refs pushed, error or None, error is permanent)."""
        args = [
            sys.executable,
            "-m",
            "expckpt.publish.remote",
            str(self.root),
            self.target.git_remote,
            self.target.dvc_remote,
            *(f"{r.ref.ref}={r.commit}" for r in records),
        ]
        with self._cond:
            if self._closing and not self._pending:
                return [], None, False
            # its own session: a Ctrl+C meant for training does not cut a push in half
            self.attempts += 1
            self._child = child = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            out, err = child.communicate(timeout=ATTEMPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            return [], f"no answer in {ATTEMPT_TIMEOUT_S:g} s", False
        finally:
            with self._cond:
                self._child = None
        pushed = [line[len("pushed ") :] for line in out.splitlines() if line.startswith("pushed ")]
        if child.returncode == 0:
            return pushed, None, False
        lines = [one_line(line) for line in err.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exited {child.returncode}"
        return pushed, reason, child.returncode == REJECTED_EXIT

    def _succeeded(self, batch: dict[str, CheckpointRecord], pushed: list[str]) -> None:
        names = [batch[ref].name for ref in pushed if ref in batch]
        self.pushed.extend(names)
        if names:
            again = " (pushing works again)" if self._failing else ""
            self.echo(f"expckpt: pushed {', '.join(names)} to {self.target.git_remote}{again}")
        self._failing = False
        self._last_reason = ""

    def _failed(self, batch: dict[str, CheckpointRecord], reason: str, permanent: bool) -> None:
        self._last_reason = reason
        newest = max(batch.values(), key=lambda r: r.step).name
        if permanent:
            self.echo(
                f"expckpt: warning: could not push {newest} to {self.target.git_remote}: {reason}; training goes on"
            )
            return
        if not self._failing:
            self.echo(
                f"expckpt: warning: could not push {newest} to {self.target.git_remote}: {reason};"
                " training goes on, will retry"
            )
        self._failing = True
