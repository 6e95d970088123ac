"""``EXPCKPT_STOP_AFTER_STEP=N``: stop training after step N as a preemption would.

``expckpt doctor`` sets it to cut a run short at a chosen step: the checkpointer treats the
completed step N (or the first completed step after it, for front ends whose steps jump, such as
the HF Trainer's global steps) like a stop event (saved whatever ``checkpoint.every`` says, and
``Decision.stop`` set), so every front end that honours ``Decision.stop`` ends there with a
complete checkpoint, and the next run resumes from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from expckpt.errors import ConfigError

__all__ = ["ENV", "REASON", "stop_after_step", "stop_reason"]

ENV = "EXPCKPT_STOP_AFTER_STEP"
REASON = "doctor stop"
"""``Decision.stop`` at that step."""


def stop_after_step(env: Mapping[str, str] | None = None) -> int | None:
    """The step ``EXPCKPT_STOP_AFTER_STEP`` names, or None when it is unset or empty."""
    raw = (os.environ if env is None else env).get(ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ConfigError(
            f"{ENV} must be a step number (0 or more), got {raw!r}; unset it to train normally", key=ENV, value=raw
        )
    return int(raw)


def stop_reason(step: int, stop_after: int | None) -> str | None:
    """``REASON`` when ``step`` is the step to stop after or a later one, else None."""
    return REASON if stop_after is not None and step >= stop_after else None
