"""Named crash and pause points for the fault-injection suite.

``EXPCKPT_CRASH_AT=<point>[:<step>]`` makes the process SIGKILL itself when it reaches that point
(of that step, if given). ``EXPCKPT_PAUSE_AT=<point>[:<step>]`` makes it sleep there instead,
``EXPCKPT_PAUSE_SECONDS`` seconds (default 10), after printing one line to stderr that starts
with ``expckpt: fault injection: pausing``; tests use it to send a signal while a checkpoint is
half written. Unset, each check is two dict lookups. Points, in the order a checkpoint passes
them: ``after-temp`` (temp file written), ``after-cache`` (hard-linked into the DVC cache),
``after-publish`` (renamed onto the checkpoint file), ``after-commit`` (Git commit written),
``after-lock`` (workspace dvc.lock written), ``after-ref`` (ref created; the workspace note is
the only step left).

It is a subscriber of ``expckpt.phases``, installed there when either variable is set.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["PAUSE_MESSAGE", "POINTS", "crash_point"]

POINTS = ("after-temp", "after-cache", "after-publish", "after-commit", "after-lock", "after-ref")
PAUSE_MESSAGE = "expckpt: fault injection: pausing"


def _matches(wanted: str, point: str, step: int) -> bool:
    name, _, at_step = wanted.partition(":")
    return name == point and (not at_step or int(at_step) == step)


def crash_point(point: str, step: int) -> None:
    """Crash (SIGKILL) or pause here if the environment asks for it; otherwise do nothing."""
    crash = os.environ.get("EXPCKPT_CRASH_AT")
    if crash and _matches(crash, point, step):
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("EXPCKPT_PAUSE_AT")
    if pause and _matches(pause, point, step):
        seconds = float(os.environ.get("EXPCKPT_PAUSE_SECONDS") or 10)
        os.write(2, f"{PAUSE_MESSAGE} {seconds:g} s at {point} of step {step}\n".encode())
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(left)
