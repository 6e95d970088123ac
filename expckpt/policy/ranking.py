"""The one rule for "better": used by best tracking, keep-best retention and the report.

A value ranks only when it is a finite number: NaN, inf, missing and non-numbers never become
the best. Between equal values the earlier step wins (an improvement must be strict).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["MODES", "better", "finite", "number", "rank_key"]

MODES = ("min", "max")


def number(value: object) -> float | None:
    """``value`` as a float when it is a number, NaN and inf included (not a bool), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    as_float = number(value)
    return as_float if as_float is not None and math.isfinite(as_float) else None


def better(value: object, than: float | None, mode: str) -> bool:
    """Whether ``value`` strictly improves on ``than`` (None: nothing yet) under ``mode``."""
    number = finite(value)
    if number is None:
        return False
    if than is None:
        return True
    return number > than if mode == "max" else number < than


def rank_key(metrics: Mapping[str, object], metric: str, mode: str, step: int) -> tuple[float, int] | None:
    """Sort key, best first, for a checkpoint's ``metric``; None when it does not rank."""
    number = finite(metrics.get(metric))
    if number is None:
        return None
    return (-number if mode == "max" else number, step)
