"""Optimizer and LR-scheduler settings that changed since the checkpoint (``dvc exp run -S lr=...``).

Loading an optimizer's or scheduler's state puts the *saved* settings back, so a new ``lr``
asked for on the command line would be silently ignored and ``dvc params diff`` would record a
value that was never used. The rules, applied after loading:

- Constructor settings of an optimizer (``lr``, ``weight_decay``, ``betas``, ...) chosen
  differently now than in the checkpoint win. With no scheduler, the new value is simply used.
- With an LR scheduler on that optimizer, the schedule is rebuilt around the new values: the
  scheduler's own bookkeeping derived from them (``base_lrs``, ``initial_lr``, ``max_lr``,
  ``min_lr``, ...) is taken from the freshly built scheduler, and the current learning rate is
  recomputed for the restored step with the scheduler's closed form. Schedulers without a closed
  form (e.g. ``ReduceLROnPlateau``, ``MultiplicativeLR``) are refused with one line.
- A scheduler built with different *shape* settings (``total_steps``, ``T_max``, ...; e.g.
  ``-S epochs=11`` for a OneCycle run) would fail deep inside PyTorch or silently keep the old
  shape: refused with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from expckpt.errors import ConfigError
from expckpt.state.torchsched import can_recompute, recompute_lrs, set_last_lr

__all__ = ["Fresh", "optimizer_hparams", "reconcile", "snapshot"]

_PLAIN = (int, float, bool, str, type(None))
_DERIVED = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
"""Param-group keys that LR schedulers compute from the optimizer's settings when built."""
_SHAPE = (
    "total_steps",
    "T_max",
    "T_0",
    "T_mult",
    "step_size",
    "milestones",
    "gamma",
    "eta_min",
    "total_iters",
    "factor",
    "start_factor",
    "end_factor",
    "power",
    "pct_start",
    "div_factor",
    "final_div_factor",
    "step_size_up",
    "step_size_down",
)
"""Scheduler settings that fix the shape of the schedule."""
_LENGTH = ("total_steps", "T_max", "T_0", "step_size", "milestones", "total_iters", "step_size_up", "step_size_down")
"""The shape settings scripts usually derive from the number of epochs or batches."""


def optimizer_hparams(optimizer: Any) -> dict[str, Any]:
    """An optimizer's constructor settings that are plain values (``lr``, ``betas``, ...)."""
    defaults = getattr(optimizer, "defaults", None) or {}
    return {
        k: v
        for k, v in defaults.items()
        if isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v))
    }


@dataclass(frozen=True)
class Fresh:
    """What the user's freshly built optimizer and scheduler hold, taken before loading."""

    hparams: dict[str, Any]
    groups: list[dict[str, Any]]
    scheduler: dict[str, Any] | None


def snapshot(optimizer: Any, scheduler: Any) -> Fresh:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    sched = dict(scheduler.state_dict()) if scheduler is not None and hasattr(scheduler, "state_dict") else None
    return Fresh(optimizer_hparams(optimizer), groups, sched)


def reconcile(
    name: str,
    optimizer: Any,
    scheduler: Any,
    fresh: Fresh,
    saved_hparams: Mapping[str, Any] | None,
    saved_scheduler: Mapping[str, Any] | None,
) -> list[str]:
    """Apply the module's rules after loading; return one line per change, saying what happens."""
    if scheduler is not None and saved_scheduler is not None and fresh.scheduler is not None:
        _check_shape(type(scheduler).__name__, fresh.scheduler, saved_scheduler)
    if not isinstance(saved_hparams, Mapping):
        return []
    changed = {
        k: (saved_hparams[k], v) for k, v in fresh.hparams.items() if k in saved_hparams and saved_hparams[k] != v
    }
    if not changed:
        return []
    for group, new in zip(optimizer.param_groups, fresh.groups):
        for key in changed:
            if key in new:
                group[key] = new[key]
    said = ", ".join(f"{name} {k} is {now!r} now ({was!r} in the checkpoint)" for k, (was, now) in changed.items())
    if scheduler is None or saved_scheduler is None:
        return [f"expckpt: {said}; training goes on with the new value{'s' if len(changed) > 1 else ''}"]
    return [_rebuild_schedule(name, optimizer, scheduler, fresh, said)]


def _check_shape(kind: str, fresh: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    for key in _SHAPE:
        if key in fresh and key in saved and fresh[key] != saved[key]:
            why = " (did epochs or the batch count change?)" if key in _LENGTH else ""
            raise ConfigError(
                f"the LR scheduler ({kind}) has {key} {fresh[key]!r} now but {saved[key]!r} in the checkpoint"
                f"{why}; a restored schedule cannot change shape: keep {key} {saved[key]!r} to resume from"
                " this checkpoint, or start over with `expckpt reset`",
                key=f"scheduler.{key}",
                value=fresh[key],
            )


def _rebuild_schedule(name: str, optimizer: Any, scheduler: Any, fresh: Fresh, said: str) -> str:
    kind = type(scheduler).__name__
    if not can_recompute(scheduler):
        raise ConfigError(
            f"{said}, but the restored LR scheduler ({kind}) cannot recompute its learning rate for a new"
            " value; keep the old settings to resume, or start over with `expckpt reset`",
            key=f"{name}.lr",
        )
    for group, new in zip(optimizer.param_groups, fresh.groups):
        for key in _DERIVED:
            if key in new:
                group[key] = new[key]
    if fresh.scheduler is not None and "base_lrs" in fresh.scheduler:
        scheduler.base_lrs = list(fresh.scheduler["base_lrs"])
    for group, lr in zip(optimizer.param_groups, recompute_lrs(scheduler)):
        group["lr"] = lr
    set_last_lr(scheduler, [group["lr"] for group in optimizer.param_groups])
    step = getattr(scheduler, "last_epoch", "?")
    return (
        f"expckpt: {said}; {kind} goes on from its step {step} rebuilt with the new value"
        f" (learning rate now {optimizer.param_groups[0]['lr']:.6g})"
    )
