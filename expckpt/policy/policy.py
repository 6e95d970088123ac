"""When to save a checkpoint and which checkpoints to keep: policies as data.

Each policy is a small frozen dataclass with one method and no I/O (orbax's ``LatestN``,
``BestN``, ``EveryNSteps`` are the model).

Keep policies see the *whole* list of existing checkpoints, in any order, and answer per
checkpoint which rules keep it::

    policy.reasons(checkpoints)      -> [frozenset({"last", "best"}), frozenset(), ...]
    policy.should_keep(checkpoints)  -> [True, False, ...]      # non-empty reasons

An empty set of reasons means "evict". The order of the input does not matter: policies
order checkpoints by ``step``. Combine rules with ``AnyOf`` (a union of reasons).

``keep_policy(keep_last=..., keep_best=..., monitor=..., mode=...)`` is the one place that turns
the retention settings into rules, for training (``CheckpointConfig.keep_policy()``) and for
``expckpt gc`` alike: ``keep_last=None`` keeps all, and ``KeepNewest`` is always included so that
a best-only rule can never evict the most recent checkpoint (orbax #526, HF #15089).
``CheckpointInfo.of(record)`` is the one conversion from a checkpoint record.

Save policies (when to save) are in ``expckpt.policy.saving``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from expckpt.policy.checks import check_mode
from expckpt.errors import ConfigError
from expckpt.policy.ranking import rank_key

__all__ = [
    "AnyOf",
    "CheckpointInfo",
    "KeepAll",
    "KeepBest",
    "KeepLast",
    "KeepNewest",
    "KeepPolicy",
    "keep_policy",
]


class _HasStepMetricsTime(Protocol):
    @property
    def step(self) -> int: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def time(self) -> float: ...


@dataclass(frozen=True)
class CheckpointInfo:
    """What policies see of one existing checkpoint."""

    step: int
    """The global training step the checkpoint was taken at."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Metrics logged at that step; keys may be missing and values may be NaN or inf."""
    time: float = 0.0
    """When it was saved, unix seconds."""

    @classmethod
    def of(cls, record: _HasStepMetricsTime) -> CheckpointInfo:
        """What policies see of a ``CheckpointRecord`` (or anything with step, metrics, time)."""
        return cls(step=record.step, metrics=record.metrics, time=record.time)


def positive_int(value: object, *, what: str, key: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}; {fix}", key=key, value=value)


# --------------------------------------------------------------------------- keep policies


class KeepPolicy:
    """Base of keep policies: subclasses implement ``reasons``."""

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> list[frozenset[str]]:
        """Per checkpoint (in input order), the names of the rules that keep it; empty = evict."""
        raise NotImplementedError

    def should_keep(self, checkpoints: Sequence[CheckpointInfo]) -> list[bool]:
        """Per checkpoint (in input order), whether any rule keeps it."""
        return [bool(r) for r in self.reasons(checkpoints)]


def _mark(count: int, chosen: set[int], reason: str) -> list[frozenset[str]]:
    tag = frozenset({reason})
    return [tag if i in chosen else frozenset() for i in range(count)]


@dataclass(frozen=True, kw_only=True)
class KeepLast(KeepPolicy):
    """Keep the ``n`` checkpoints with the highest steps (reason ``"last"``)."""

    n: int
    """How many of the most recent checkpoints to keep, >= 1."""

    def __post_init__(self) -> None:
        positive_int(
            self.n,
            what="KeepLast.n (checkpoint.keep_last)",
            key="checkpoint.keep_last",
            fix="use 1 to keep only the newest, or KeepAll() to keep every checkpoint",
        )

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> list[frozenset[str]]:
        order = sorted(range(len(checkpoints)), key=lambda i: (checkpoints[i].step, i), reverse=True)
        return _mark(len(checkpoints), set(order[: self.n]), "last")


@dataclass(frozen=True, kw_only=True)
class KeepBest(KeepPolicy):
    """Keep the ``k`` checkpoints with the best ``metric`` (reason ``"best"``).

    Missing, NaN and infinite values are never "best". On equal values the earlier step wins.
    """

    k: int
    """How many of the best checkpoints to keep, >= 1."""
    metric: str
    """The metric to rank by, e.g. ``"val_loss"``."""
    mode: str = "max"
    """``"max"`` when higher is better (accuracy), ``"min"`` when lower is better (loss)."""

    def __post_init__(self) -> None:
        positive_int(
            self.k,
            what="KeepBest.k (checkpoint.keep_best)",
            key="checkpoint.keep_best",
            fix="use 1 to keep the single best checkpoint",
        )
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(
                f"KeepBest.metric (checkpoint.monitor) must be a metric name, got {self.metric!r}; "
                "set it to a metric the run logs, e.g. 'val_loss'",
                key="checkpoint.monitor",
                value=self.metric,
            )
        check_mode(self.mode)

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> list[frozenset[str]]:
        ranked = []
        for i, ckpt in enumerate(checkpoints):
            key = rank_key(ckpt.metrics, self.metric, self.mode, ckpt.step)
            if key is not None:
                ranked.append((*key, i))
        ranked.sort()
        return _mark(len(checkpoints), {i for _, _, i in ranked[: self.k]}, "best")


@dataclass(frozen=True, kw_only=True)
class KeepAll(KeepPolicy):
    """Keep every checkpoint (reason ``"all"``)."""

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> list[frozenset[str]]:
        return [frozenset({"all"}) for _ in checkpoints]


@dataclass(frozen=True, kw_only=True)
class KeepNewest(KeepPolicy):
    """Always keep the checkpoint(s) with the highest step (reason ``"newest"``), for resuming."""

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> list[frozenset[str]]:
        if not checkpoints:
            return []
        newest = max(c.step for c in checkpoints)
        return _mark(len(checkpoints), {i for i, c in enumerate(checkpoints) if c.step == newest}, "newest")


@dataclass(frozen=True, kw_only=True)
class AnyOf(KeepPolicy):
    """Keep a checkpoint when any of ``policies`` keeps it; its reasons are the union."""

    policies: tuple[KeepPolicy, ...]
    """The rules to combine; at least one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        if not self.policies:
            raise ConfigError(
                "AnyOf needs at least one keep policy, got none; an empty union would "
                "evict every checkpoint, add KeepNewest() at least",
                value=self.policies,
            )
        for policy in self.policies:
            if not isinstance(policy, KeepPolicy):
                raise ConfigError(
                    f"AnyOf.policies must be keep policies, got {policy!r}; "
                    "use KeepLast, KeepBest, KeepAll or KeepNewest",
                    value=policy,
                )

    def reasons(self, checkpoints: Sequence[CheckpointInfo]) -> list[frozenset[str]]:
        result = [frozenset[str]() for _ in checkpoints]
        for policy in self.policies:
            result = [a | b for a, b in zip(result, policy.reasons(checkpoints), strict=True)]
        return result


def keep_policy(*, keep_last: int | None, keep_best: int = 0, monitor: str | None = None, mode: str = "max") -> AnyOf:
    """The retention rules for these settings: the ``keep_last`` newest (``None`` = all), the
    ``keep_best`` best by ``monitor``, and always the newest.

    ``keep_best > 0`` needs ``monitor``; the error names the params key (the CLI's flags map to the
    same names).
    """
    rules: list[KeepPolicy] = [KeepAll() if keep_last is None else KeepLast(n=keep_last)]
    if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 0:
        raise ConfigError(
            f"checkpoint.keep_best must be a non-negative integer, got {keep_best!r}; "
            "use 0 to keep no best checkpoints, or 1 to keep the single best",
            key="checkpoint.keep_best",
            value=keep_best,
        )
    if keep_best > 0:
        if not monitor:
            raise ConfigError(
                f"checkpoint.monitor is required when checkpoint.keep_best is {keep_best}; "
                "name the metric to rank by (e.g. val_loss), or keep no best checkpoints",
                key="checkpoint.monitor",
                value=monitor,
            )
        rules.append(KeepBest(k=keep_best, metric=monitor, mode=mode))
    rules.append(KeepNewest())
    return AnyOf(policies=tuple(rules))
