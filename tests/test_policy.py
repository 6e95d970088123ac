"""Keep and save policies, as tables of (steps, metrics) -> kept."""

from __future__ import annotations

import math

import pytest

from expckpt.policy.config import CheckpointConfig
from expckpt.errors import ConfigError
from expckpt.policy.policy import (
    AnyOf,
    CheckpointInfo,
    KeepAll,
    KeepBest,
    KeepLast,
    KeepNewest,
)
from expckpt.policy.saving import (
    SaveContext,
    AnyOfSave,
    EveryMinutes,
    EverySteps,
    Never,
)

NAN, INF = math.nan, math.inf


def ckpts(steps, values=None, metric="acc"):
    """CheckpointInfo per step; ``values[i]`` is the metric at ``steps[i]`` (None = not logged)."""
    values = values if values is not None else [None] * len(steps)
    return [CheckpointInfo(step=s, metrics={} if v is None else {metric: v}) for s, v in zip(steps, values)]


def kept_steps(policy, checkpoints):
    return sorted(c.step for c, keep in zip(checkpoints, policy.should_keep(checkpoints)) if keep)


@pytest.mark.parametrize(
    ("policy", "steps", "values", "kept"),
    [
        # keep_last
        (KeepLast(n=3), list(range(12)), None, [9, 10, 11]),
        (KeepLast(n=3), [11, 0, 5, 9, 10, 3], None, [9, 10, 11]),  # input order does not matter
        (KeepLast(n=5), [1, 2], None, [1, 2]),
        (KeepLast(n=1), [], None, []),
        # keep_best, max and min
        (KeepBest(k=1, metric="acc", mode="max"), [0, 1, 2, 3], [0.5, 0.9, 0.7, 0.8], [1]),
        (KeepBest(k=1, metric="acc", mode="min"), [0, 1, 2, 3], [0.5, 0.9, 0.7, 0.8], [0]),
        (KeepBest(k=2, metric="acc", mode="max"), [3, 0, 2, 1], [0.8, 0.5, 0.7, 0.9], [1, 3]),
        # NaN, inf and missing values are never best
        (KeepBest(k=1, metric="acc", mode="max"), [0, 1, 2], [0.1, NAN, INF], [0]),
        (KeepBest(k=1, metric="acc", mode="min"), [0, 1, 2], [0.1, -INF, NAN], [0]),
        (KeepBest(k=1, metric="acc", mode="max"), [0, 1, 2], [None, 0.2, None], [1]),
        (KeepBest(k=2, metric="acc", mode="max"), [0, 1, 2], [NAN, NAN, 0.3], [2]),
        (KeepBest(k=1, metric="acc", mode="max"), [0, 1], [NAN, None], []),
        # ties: the earlier step wins
        (KeepBest(k=1, metric="acc", mode="max"), [4, 2, 7], [0.9, 0.9, 0.9], [2]),
        (KeepBest(k=2, metric="acc", mode="min"), [5, 1, 3, 0], [0.2, 0.1, 0.1, 0.3], [1, 3]),
        # keep all / newest
        (KeepAll(), [3, 1, 2], None, [1, 2, 3]),
        (KeepNewest(), [3, 10, 2], None, [10]),
        (KeepNewest(), [], None, []),
        # union keep_last 3 + keep_best 1 where the best is early
        (
            AnyOf(policies=(KeepLast(n=3), KeepBest(k=1, metric="acc"))),
            list(range(8)),
            [0.1, 0.95, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            [1, 5, 6, 7],
        ),
        # best-only retention (keep_last 1 + best) never evicts the newest
        (AnyOf(policies=(KeepBest(k=1, metric="acc"), KeepNewest())), [0, 1, 2, 3], [0.9, 0.2, 0.3, NAN], [0, 3]),
        (
            AnyOf(policies=(KeepLast(n=1), KeepBest(k=1, metric="acc"), KeepNewest())),
            [0, 1, 2, 3],
            [0.9, 0.2, 0.3, 0.1],
            [0, 3],
        ),
    ],
)
def test_keep_table(policy, steps, values, kept):
    assert kept_steps(policy, ckpts(steps, values)) == kept


def test_reasons_are_per_checkpoint_in_input_order():
    checkpoints = ckpts([2, 0, 1], [0.1, 0.9, 0.2])
    policy = AnyOf(policies=[KeepLast(n=1), KeepBest(k=1, metric="acc"), KeepNewest()])
    assert policy.reasons(checkpoints) == [frozenset({"last", "newest"}), frozenset({"best"}), frozenset()]
    assert policy.should_keep(checkpoints) == [True, True, False]
    assert KeepAll().reasons(checkpoints[:1]) == [frozenset({"all"})]


def test_best_and_newest_on_the_same_checkpoint_has_both_reasons():
    checkpoints = ckpts([0, 1], [0.1, 0.9])
    policy = AnyOf(policies=(KeepBest(k=1, metric="acc"), KeepNewest()))
    assert policy.reasons(checkpoints) == [frozenset(), frozenset({"best", "newest"})]


def test_policies_are_frozen_data():
    assert KeepLast(n=3) == KeepLast(n=3)
    assert hash(AnyOf(policies=[KeepNewest()])) == hash(AnyOf(policies=(KeepNewest(),)))
    with pytest.raises(AttributeError):
        KeepLast(n=3).n = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KeepLast(n=0), r"checkpoint\.keep_last.*positive integer, got 0"),
        (lambda: KeepLast(n=True), r"checkpoint\.keep_last.*got True"),
        (lambda: KeepBest(k=0, metric="acc"), r"checkpoint\.keep_best.*got 0"),
        (lambda: KeepBest(k=1, metric=""), r"checkpoint\.monitor.*got ''"),
        (
            lambda: KeepBest(k=1, metric="acc", mode="up"),
            r"checkpoint\.mode must be one of 'min', 'max', got 'up' \(str\)",
        ),
        (lambda: AnyOf(policies=()), r"at least one keep policy"),
        (lambda: AnyOf(policies=(EverySteps(n=1),)), r"must be keep policies"),
        (lambda: EverySteps(n=0), r"checkpoint\.every.*got 0; .*Never\(\)"),
        (lambda: EveryMinutes(minutes=0), r"checkpoint\.every_minutes.*positive number, got 0"),
        (lambda: EveryMinutes(minutes=NAN), r"checkpoint\.every_minutes.*got nan"),
        (lambda: AnyOfSave(policies=()), r"at least one save policy"),
        (lambda: AnyOfSave(policies=(KeepAll(),)), r"must be save policies"),
    ],
)
def test_invalid_policies(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize(
    ("n", "saved"),
    [(1, list(range(12))), (5, [4, 9]), (3, [2, 5, 8, 11]), (20, [])],
)
def test_every_steps(n, saved):
    policy = EverySteps(n=n)
    assert [s for s in range(12) if policy.should_save(SaveContext(step=s))] == saved


def at(time):
    return CheckpointInfo(step=0, metrics={}, time=time)


@pytest.mark.parametrize(
    ("policy", "now", "last", "expected"),
    [
        (EveryMinutes(minutes=1), 1000.0, at(950.0), False),
        (EveryMinutes(minutes=1), 1010.0, at(950.0), True),  # exactly 60 s
        (EveryMinutes(minutes=0.5), 1000.0, at(969.0), True),
        (EveryMinutes(minutes=1), 1000.0, None, True),  # no save and no start: start the clock
        (EveryMinutes(minutes=1, start=990.0), 1000.0, None, False),
        (EveryMinutes(minutes=1, start=900.0), 1000.0, None, True),
        (EveryMinutes(minutes=1, start=0.0), 1000.0, at(990.0), False),  # last save wins over start
        (Never(), 1e9, None, False),
        (AnyOfSave(policies=(EverySteps(n=5), EveryMinutes(minutes=1, start=990.0))), 1000.0, None, False),
        (AnyOfSave(policies=(EverySteps(n=5), EveryMinutes(minutes=1, start=900.0))), 1000.0, None, True),
    ],
)
def test_time_and_union_save(policy, now, last, expected):
    assert policy.should_save(SaveContext(step=2, now=now, last_saved=last)) is expected


def test_any_of_save_by_steps():
    policy = AnyOfSave(policies=[EverySteps(n=5), Never()])
    assert [s for s in range(10) if policy.should_save(SaveContext(step=s))] == [4, 9]


@pytest.mark.parametrize(
    ("event", "expected"),
    [("step", False), ("final", True), ("stop", True)],
)
def test_final_and_stop_saves_are_policies(event, expected):
    """every: 5 skips step 2, but the last step of a run and a stop are saved all the same."""
    policy = CheckpointConfig.from_params({"every": 5}).save_policy(start=0.0)
    assert policy.should_save(SaveContext(step=2, event=event)) is expected


def test_checkpointing_off_saves_nothing_even_at_the_end():
    policy = CheckpointConfig.from_params({"every": 0}).save_policy()
    assert not any(policy.should_save(SaveContext(step=2, event=e)) for e in ("step", "final", "stop"))


@pytest.mark.parametrize(
    ("field", "bad"),
    [("mode", "up"), ("divergence_steps", 1), ("patience", 0)],
)
def test_each_setting_is_validated_by_one_rule_wherever_it_arrives(field, bad):
    """params.yaml, policy objects and the report say the same thing about the same mistake."""
    from expckpt.policy.report import analyse

    makers = [
        lambda: CheckpointConfig(**{field: bad, "monitor": "acc"}),
        lambda: analyse([], monitor="acc", **{"mode": "max", field: bad}),
    ]
    if field == "mode":
        makers.append(lambda: KeepBest(k=1, metric="acc", mode=bad))
    messages = set()
    for make in makers:
        with pytest.raises(ConfigError) as caught:
            make()
        messages.add(str(caught.value))
    assert len(messages) == 1 and f"checkpoint.{field} must be" in messages.pop()
