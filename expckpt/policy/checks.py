"""Validation shared by every place a setting arrives: params.yaml, policy objects, the CLI.

One function per concept, one message per mistake: it names the key, the value and the fix.
"""

from __future__ import annotations

from expckpt.errors import ConfigError

__all__ = ["check_divergence_steps", "check_mode", "check_patience", "fail", "show"]

MODE_FIX = "use 'max' when higher is better (accuracy) or 'min' when lower is better (loss)"


def show(value: object) -> str:
    """A value as a message shows it: ``3``, ``None``, ``'up' (str)``."""
    if value is None or type(value) is int:
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


def fail(key: str, value: object, expect: str, fix: str) -> None:
    raise ConfigError(f"{key} must be {expect}, got {show(value)}; {fix}", key=key, value=value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_mode(value: object, key: str = "checkpoint.mode") -> None:
    if not isinstance(value, str) or value not in ("min", "max"):
        fail(key, value, "one of 'min', 'max'", MODE_FIX)


def check_divergence_steps(value: object, key: str = "checkpoint.divergence_steps") -> None:
    if not _is_int(value) or value < 2:  # type: ignore[operator]
        fail(key, value, "an integer >= 2", "use 3 to call 3 rises in a row diverging (1 rise is noise)")


def check_patience(value: object, key: str = "checkpoint.patience") -> None:
    if value is not None and (not _is_int(value) or value < 1):  # type: ignore[operator]
        fail(key, value, "a positive integer or null", "use e.g. 10, or null for no plateau check")
