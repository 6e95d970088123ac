"""A reader/writer lock between checkpoint writers (shared) and ``expckpt gc`` (exclusive).

A checkpoint holds it from adding its cache object until its ref exists, and freeing a
dropped checkpoint's objects holds it too, so gc never sees an object whose ref is about to
appear and deletes it.

The lock is an ``flock`` (the kernel drops it when its holder dies, however it dies). Beside it,
each holder leaves a small note ``gc-holders/<pid>-<n>.json`` (pid, mode, command) so that a
waiting gc can say whom it waits for; notes of dead processes are ignored and cleaned up. A
wait is bounded when ``timeout`` is given, and ends in one ``ProjectError`` line naming the
holders.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from expckpt.errors import ProjectError
from expckpt.text import one_line

__all__ = ["LockHolder", "gc_lock", "lock_holders", "pid_alive"]

_POLL_S = 0.05
_counter = itertools.count()
_counter_lock = threading.Lock()


@dataclass(frozen=True)
class LockHolder:
    """A live process that holds (or is taking) the gc lock."""

    pid: int
    mode: str
    """``"shared"`` (a checkpoint writer) or ``"exclusive"`` (``expckpt gc``)."""
    command: str

    def describe(self) -> str:
        role = "a checkpoint writer" if self.mode == "shared" else "another expckpt gc"
        return f"pid {self.pid} ({self.command}), {role}"


def _paths(git_dir: Path) -> tuple[Path, Path]:
    base = Path(git_dir) / "expckpt"
    return base / "gc.lock", base / "gc-holders"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holders(git_dir: Path, *, exclude_pid: int | None = None) -> list[LockHolder]:
    """Live processes that noted holding the gc lock (stale notes are removed)."""
    _, holders_dir = _paths(git_dir)
    found = []
    for note in sorted(holders_dir.glob("*.json")) if holders_dir.is_dir() else []:
        try:
            data = json.loads(note.read_text())
            pid, mode, command = int(data["pid"]), str(data["mode"]), str(data["command"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not pid_alive(pid):
            with contextlib.suppress(OSError):
                note.unlink()
            continue
        if pid != exclude_pid:
            found.append(LockHolder(pid, mode, one_line(command, 120)))
    return found


def _own_command() -> str:
    """This process's command line, program name shortened (``python train.py``)."""
    try:
        argv = [a.decode(errors="replace") for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        argv = [sys.executable, *sys.argv]
    if argv:
        argv[0] = os.path.basename(argv[0])
    return " ".join(argv) or "python"


@contextlib.contextmanager
def _holder_note(holders_dir: Path, mode: str) -> Iterator[None]:
    with _counter_lock:
        n = next(_counter)
    note = holders_dir / f"{os.getpid()}-{n}.json"
    command = _own_command()
    try:
        holders_dir.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps({"pid": os.getpid(), "mode": mode, "command": command, "since": time.time()}))
    except OSError:  # the note only helps a waiting gc explain itself; never fail a checkpoint for it
        pass
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            note.unlink()


def _timeout_error(lock: Path, git_dir: Path, timeout: float, exclusive: bool) -> ProjectError:
    holders = lock_holders(git_dir, exclude_pid=os.getpid())
    wanted = "exclusive" if exclusive else "shared"
    blockers = [h for h in holders if exclusive or h.mode == "exclusive"]
    who = "; ".join(h.describe() for h in blockers) or "a process that left no note (another tool?)"
    return ProjectError(
        f"timed out after {timeout:g} s waiting for the {wanted} gc lock {lock}: held by {who};"
        " let it finish (or resume a paused run) and try again, or wait longer with --wait SECONDS;"
        " nothing was removed",
        path=lock,
    )


@contextlib.contextmanager
def gc_lock(
    git_dir: Path,
    *,
    exclusive: bool,
    timeout: float | None = None,
    on_wait: Callable[[list[LockHolder]], None] | None = None,
) -> Iterator[None]:
    """Hold the gc lock: ``exclusive`` for gc, shared for checkpoint writers.

    ``timeout`` (seconds) bounds the wait (None waits as long as it takes); ``on_wait`` is called
    once, with the holders, when the lock is not free at once.
    """
    lock, holders_dir = _paths(git_dir)
    lock.parent.mkdir(parents=True, exist_ok=True)
    mode = "exclusive" if exclusive else "shared"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with _holder_note(holders_dir, mode):
            op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(lock_holders(git_dir, exclude_pid=os.getpid()))
                if timeout is None:
                    fcntl.flock(fd, op)
                else:
                    deadline = time.monotonic() + timeout
                    while True:
                        try:
                            fcntl.flock(fd, op | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            if time.monotonic() >= deadline:
                                raise _timeout_error(lock, git_dir, timeout, exclusive) from None
                            time.sleep(_POLL_S)
            yield
    finally:
        os.close(fd)
