"""Read-only commands answer, or say within two seconds whom they wait for, and give up in time.

A checkpoint being published writes DVC's state database (``LockBuilder.remember``: the hash of
the new file, so ``dvc exp run`` does not hash it again). A training stopped there (SIGSTOP,
Ctrl+Z) keeps that SQLite database locked, and ``expckpt gc --dry-run``, which asks DVC what is
in use, waits on it (measured: still waiting after 20 s; ``show``, ``list``, ``verify`` and
``report`` do not touch it today). ``bounded`` runs such a command with a watchdog: after
``SAY_AFTER_S`` it prints one line naming the checkpoint writers that hold expckpt's gc lock
(pid, command, and "STOPPED" when stopped, with how to resume it), and after
``EXPCKPT_READ_WAIT`` seconds (default 30) it gives up with one line and exit status 1. These
commands change nothing, so leaving mid-way loses nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from expckpt.store.gclock import LockHolder, lock_holders

__all__ = ["SAY_AFTER_S", "bounded", "describe_holders"]

SAY_AFTER_S = 2.0
DEFAULT_GIVE_UP_S = 30.0


def _give_up_s() -> float:
    try:
        return max(0.0, float(os.environ.get("EXPCKPT_READ_WAIT", DEFAULT_GIVE_UP_S)))
    except ValueError:
        return DEFAULT_GIVE_UP_S


def _stopped(pid: int) -> bool:
    try:
        import psutil

        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except Exception:  # noqa: BLE001 - gone, or no psutil: not known to be stopped
        return False


def describe_holders(holders: list[LockHolder]) -> str:
    """``pid 12 (python train.py), a checkpoint writer, STOPPED: resume it with `kill -CONT 12```; ..."""
    parts = []
    for holder in holders:
        state = (
            f", STOPPED (SIGSTOP or Ctrl+Z): resume it with `kill -CONT {holder.pid}` (or `fg` in its terminal)"
            if _stopped(holder.pid)
            else ""
        )
        parts.append(holder.describe() + state)
    return "; ".join(parts)


@contextlib.contextmanager
def bounded(
    git_dir: Path,
    what: str,
    *,
    say_after: float = SAY_AFTER_S,
    give_up_after: float | None = None,
    echo: Callable[[str], None] | None = None,
    leave: Callable[[int], None] = os._exit,
) -> Iterator[None]:
    """Run the body; if it takes longer than ``say_after`` s say whom it waits for, and after
    ``give_up_after`` s (``EXPCKPT_READ_WAIT``) say so and ``leave(1)`` (the body may be blocked
    inside SQLite, where nothing else interrupts it)."""
    give_up = _give_up_s() if give_up_after is None else give_up_after
    say = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    done = threading.Event()

    def who() -> str:
        holders = describe_holders(lock_holders(git_dir))
        return holders or "no expckpt process holds a lock here; another process holds DVC's or Git's"

    def watch() -> None:
        if done.wait(min(say_after, give_up)):
            return
        say(f"expckpt: {what} is waiting for DVC's state database or a lock; held by: {who()}")
        if done.wait(max(0.0, give_up - say_after)):
            return
        say(
            f"expckpt: error: {what} gave up after {give_up:g} s (EXPCKPT_READ_WAIT) waiting for: {who()};"
            " nothing was changed"
        )
        leave(1)

    thread = threading.Thread(target=watch, name="expckpt-read-wait", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
