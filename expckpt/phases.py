"""The publishing order as named phases, and one hook to watch them.

A checkpoint passes these phases in order (see ``committer``)::

    after-temp     the temp file is complete and fsynced, its MD5 known
    after-cache    the object is in the DVC cache
    after-publish  the temp file was renamed onto the checkpoint path
    after-commit   the Git commit exists (no ref names it yet)
    after-lock     the workspace dvc.lock names the new object
    after-ref      the ref <exp>@<step> exists: the checkpoint is complete
    after-note     the workspace note names it as the last complete checkpoint

Fault injection (``expckpt.faults``), benchmark timings and ``-v`` logging subscribe here
instead of patching internals::

    unsubscribe = phases.subscribe(lambda name, step: print(name, step))
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["PHASES", "Listener", "log_phases", "phase", "subscribe"]

PHASES = ("after-temp", "after-cache", "after-publish", "after-commit", "after-lock", "after-ref", "after-note")

Listener = Callable[[str, int], None]
_listeners: tuple[Listener, ...] = ()
_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener(phase, step)`` at every phase from now on; returns the unsubscribe call."""
    global _listeners
    with _lock:
        _listeners = (*_listeners, listener)

    def unsubscribe() -> None:
        global _listeners
        with _lock:
            _listeners = tuple(x for x in _listeners if x is not listener)

    return unsubscribe


def phase(name: str, step: int) -> None:
    """Announce that the checkpoint of ``step`` reached phase ``name``."""
    for listener in _listeners:
        listener(name, step)


def log_phases(stream: TextIO | None = None) -> Callable[[], None]:
    """``-v``: print each phase with the milliseconds since the previous one of the same step."""
    out = stream if stream is not None else sys.stderr
    last: dict[int, float] = {}

    def log(name: str, step: int) -> None:
        now = time.perf_counter()
        since = f" (+{(now - last[step]) * 1000:.1f} ms)" if step in last else ""
        last[step] = now
        if name == PHASES[-1]:
            last.pop(step, None)
        print(f"expckpt: step {step}: {name}{since}", file=out, flush=True)

    return subscribe(log)


if os.environ.get("EXPCKPT_CRASH_AT") or os.environ.get("EXPCKPT_PAUSE_AT"):
    from expckpt import faults

    subscribe(faults.crash_point)
