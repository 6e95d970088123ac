"""ranking: the one rule for "a number" and "better" (best tracking, keep-best, the report)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from expckpt.policy.ranking import better, finite, number, rank_key


def test_number_reads_numbers_including_nan_and_inf_and_nothing_else() -> None:
    assert number(3) == 3.0 and isinstance(number(3), float)
    assert number(0.25) == 0.25 and number("1.5") == 1.5
    assert number(np.float32(0.5)) == 0.5 and number(torch.tensor(2.0)) == 2.0
    assert math.isnan(number(float("nan")))  # type: ignore[arg-type]
    assert number(float("-inf")) == -math.inf
    assert number(True) is None and number(False) is None  # a bool is not a metric
    assert number(None) is None and number("loss") is None and number([1.0]) is None and number({}) is None


def test_finite_drops_nan_and_inf() -> None:
    assert finite(2) == 2.0 and finite(-0.0) == 0.0
    assert finite(float("nan")) is None and finite(math.inf) is None and finite(-math.inf) is None
    assert finite(True) is None and finite(None) is None and finite("x") is None


@pytest.mark.parametrize(
    ("value", "than", "mode", "expected"),
    [
        (0.9, None, "max", True),  # the first finite value is an improvement
        (0.9, None, "min", True),
        (0.9, 0.8, "max", True),
        (0.7, 0.8, "max", False),
        (0.8, 0.8, "max", False),  # equal is not better: the earlier step keeps the title
        (0.7, 0.8, "min", True),
        (0.8, 0.8, "min", False),
        (0.9, 0.8, "min", False),
        (math.nan, None, "max", False),  # NaN, inf, missing and non-numbers never become the best
        (math.inf, 0.8, "max", False),
        (-math.inf, 0.8, "min", False),
        (None, None, "min", False),
        ("n/a", None, "max", False),
        (True, 0.0, "max", False),
    ],
)
def test_better_is_a_strict_improvement_of_a_finite_value(
    value: object, than: float | None, mode: str, expected: bool
) -> None:
    assert better(value, than, mode) is expected


def test_rank_key_sorts_best_first_with_the_earlier_step_winning_ties() -> None:
    runs = {0: {"acc": 0.5}, 1: {"acc": 0.9}, 2: {"acc": 0.9}, 3: {"acc": math.nan}, 4: {}, 5: {"acc": 0.7}}
    keyed = {step: rank_key(m, "acc", "max", step) for step, m in runs.items()}
    assert keyed[3] is None and keyed[4] is None
    assert keyed[1] == (-0.9, 1)
    assert sorted((k, s) for s, k in keyed.items() if k is not None) == [
        ((-0.9, 1), 1),
        ((-0.9, 2), 2),
        ((-0.7, 5), 5),
        ((-0.5, 0), 0),
    ]
    by_loss = {step: rank_key({"loss": v}, "loss", "min", step) for step, v in enumerate([0.3, 0.1, 0.2])}
    assert sorted(by_loss, key=lambda s: by_loss[s]) == [1, 2, 0]  # type: ignore[arg-type, return-value]
