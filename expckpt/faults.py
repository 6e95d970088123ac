"""Named crash points for the fault-injection suite.

``EXPCKPT_CRASH_AT=<point>[:<step>]`` makes the process SIGKILL itself when it reaches that point
(of that step, if given). Unset, each check is one dict lookup. Points, in the order a
checkpoint passes them: ``after-temp``, ``after-cache``, ``after-publish``, ``after-commit``,
``after-ref``.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "crash_point"]

POINTS = ("after-temp", "after-cache", "after-publish", "after-commit", "after-ref")


def crash_point(point: str, step: int) -> None:
    wanted = os.environ.get("EXPCKPT_CRASH_AT")
    if not wanted:
        return
    name, _, at_step = wanted.partition(":")
    if name == point and (not at_step or int(at_step) == step):
        os.kill(os.getpid(), signal.SIGKILL)
