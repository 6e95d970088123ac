"""When to save a checkpoint: save policies as data, told about each step by a context.

Save policies answer ``should_save(context)`` for each completed step, given a ``SaveContext``
(step, time, the last save, and the event: an ordinary ``"step"``, the ``"final"`` step when
training ends, or the ``"stop"`` step when the training watch ends it): ``EverySteps``,
``EveryMinutes``, ``OnEvents`` (the final and the stop save are policies, not special cases),
``Never`` and the union ``AnyOfSave`` (orbax's ``DecisionContext`` is the model).

``EveryMinutes`` and the first save: the clock runs from ``last_saved.time`` when there is a
previous checkpoint, otherwise from ``start`` (the run's start, unix seconds). When neither is
known the policy saves at once, which starts the clock from a real checkpoint; pass ``start``
(``config.save_policy(start=...)``) to avoid a save at the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from expckpt.errors import ConfigError
from expckpt.policy.policy import CheckpointInfo, positive_int

__all__ = ["AnyOfSave", "EveryMinutes", "EverySteps", "Never", "OnEvents", "SaveContext", "SavePolicy"]


@dataclass(frozen=True, kw_only=True)
class SaveContext:
    """What a save policy is told about the step just completed."""

    step: int
    """The step that completed."""
    now: float = 0.0
    """Unix time now."""
    last_saved: CheckpointInfo | None = None
    """The last checkpoint saved (or restored), if any."""
    event: str = "step"
    """``"step"``, ``"final"`` (training ends) or ``"stop"`` (the training watch stops it)."""


class SavePolicy:
    """Base of save policies: subclasses implement ``should_save``."""

    def should_save(self, context: SaveContext) -> bool:
        """Whether to save a checkpoint of ``context.step``."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class EverySteps(SavePolicy):
    """Save when ``(step + 1) % n == 0``: n=1 saves every step, n=5 saves steps 4, 9, 14, ..."""

    n: int
    """Save every ``n``-th step, >= 1."""

    def __post_init__(self) -> None:
        positive_int(
            self.n,
            what="EverySteps.n (checkpoint.every)",
            key="checkpoint.every",
            fix="use 1 to save every step, or Never() to turn checkpointing off",
        )

    def should_save(self, context: SaveContext) -> bool:
        return (context.step + 1) % self.n == 0


@dataclass(frozen=True, kw_only=True)
class EveryMinutes(SavePolicy):
    """Save when ``minutes`` have passed since the last save (or since ``start``).

    With no previous save and no ``start`` it saves at once, which starts the clock.
    """

    minutes: float
    """Minutes between saves, > 0."""
    start: float | None = None
    """When the run started (unix seconds); the clock for the first save runs from here."""

    def __post_init__(self) -> None:
        m = self.minutes
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0:
            raise ConfigError(
                f"EveryMinutes.minutes (checkpoint.every_minutes) must be a positive number, got {m!r}; "
                "use e.g. 30 to save every half hour, or null to save by steps only",
                key="checkpoint.every_minutes",
                value=m,
            )

    def should_save(self, context: SaveContext) -> bool:
        since = context.last_saved.time if context.last_saved is not None else self.start
        return since is None or context.now - since >= self.minutes * 60


@dataclass(frozen=True, kw_only=True)
class OnEvents(SavePolicy):
    """Save at the listed events: ``"final"`` (the last step of a run) and ``"stop"``."""

    events: tuple[str, ...] = ("final", "stop")

    def should_save(self, context: SaveContext) -> bool:
        return context.event in self.events


@dataclass(frozen=True, kw_only=True)
class Never(SavePolicy):
    """Never save (``checkpoint.every: 0``)."""

    def should_save(self, context: SaveContext) -> bool:
        return False


@dataclass(frozen=True, kw_only=True)
class AnyOfSave(SavePolicy):
    """Save when any of ``policies`` says so."""

    policies: tuple[SavePolicy, ...]
    """The rules to combine; at least one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        if not self.policies:
            raise ConfigError(
                "AnyOfSave needs at least one save policy, got none; use Never() to turn checkpointing off",
                value=self.policies,
            )
        for policy in self.policies:
            if not isinstance(policy, SavePolicy):
                raise ConfigError(
                    f"AnyOfSave.policies must be save policies, got {policy!r}; "
                    "use EverySteps, EveryMinutes, OnEvents or Never",
                    value=policy,
                )

    def should_save(self, context: SaveContext) -> bool:
        return any(p.should_save(context) for p in self.policies)
