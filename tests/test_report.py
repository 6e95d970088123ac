"""analyse() and the report lines, on constructed metric histories."""

from __future__ import annotations

import math
import random

import pytest

from expckpt.errors import ConfigError
from expckpt.policy.report import Report, analyse, improvement_line

NAN, INF = math.nan, math.inf


def history(rows, names=("acc", "loss")):
    """(step, {name: value}) per row; a None value is left out (not logged)."""
    return [(row[0], {n: v for n, v in zip(names, row[1:]) if v is not None}) for row in rows]


# step, acc, loss
HEALTHY = history([(0, 0.5, 1.0), (1, 0.7, 0.8), (2, 0.8, 0.6), (3, 0.9, 0.5)])
RISING = history(
    [(0, 0.5, 1.0), (1, 0.7, 0.8), (2, 0.8, 0.6), (3, 0.93, 0.5), (4, 0.9, 0.55), (5, 0.9, 0.6), (6, 0.91, 0.7)]
)
NAN_LOSS = history([(0, 0.5, 1.0), (1, 0.6, 0.9), (2, 0.65, 0.8), (3, 0.7, NAN), (4, None, NAN)])


def test_healthy_run():
    report = analyse(HEALTHY, monitor="acc", mode="max")
    assert (report.best_step, report.best_value, report.last_step) == (3, 0.9, 3)
    assert report.steps_since_improvement == 0
    assert not report.diverging and report.diverging_since is None and not report.plateau
    assert report.nonfinite == [] and report.recommended_step == 3
    assert report.lines() == ["best acc 0.9 at step 3 (the latest step)", "apply: step 3"]


def test_history_order_does_not_matter():
    shuffled = RISING[:]
    random.Random(0).shuffle(shuffled)
    assert analyse(shuffled, monitor="acc", mode="max") == analyse(RISING, monitor="acc", mode="max")


def test_rising_loss_is_diverging():
    report = analyse(RISING, monitor="acc", mode="max", divergence_steps=3)
    assert report.diverging and report.diverging_since == 4 and report.rising_steps == 3
    assert (report.best_step, report.steps_since_improvement, report.recommended_step) == (3, 3, 3)
    assert report.lines() == [
        "best acc 0.93 at step 3 (3 steps ago)",
        "loss rose 3 steps in a row since step 4: diverging",
        "apply: step 3",
    ]


@pytest.mark.parametrize(("divergence_steps", "diverging"), [(2, True), (3, True), (4, False)])
def test_divergence_steps_threshold(divergence_steps, diverging):
    report = analyse(RISING, monitor=None, mode="max", divergence_steps=divergence_steps)
    assert report.diverging is diverging
    assert report.rising_steps == (3 if diverging else 0)


def test_rise_that_recovered_is_not_diverging():
    rows = history([(0, None, 1.0), (1, None, 1.1), (2, None, 1.2), (3, None, 1.3), (4, None, 0.9)])
    assert not analyse(rows, monitor=None, mode="min").diverging


def test_without_monitor_recommends_last_step_before_the_rise():
    report = analyse(RISING, monitor=None, mode="max")
    assert report.best_step is None and report.steps_since_improvement is None
    assert report.recommended_step == 3
    assert report.lines() == ["loss rose 3 steps in a row since step 4: diverging", "apply: step 3"]


def test_nan_in_loss_is_diverging():
    report = analyse(NAN_LOSS, monitor=None, mode="max")
    assert report.diverging and report.diverging_since == 3 and report.rising_steps == 0
    assert report.nonfinite == [(3, "loss"), (4, "loss")]
    assert report.recommended_step == 2
    assert report.lines() == ["NaN in loss at step 3 (and 1 later step): diverging", "apply: step 2"]


def test_nan_after_a_rise_dates_divergence_from_the_rise():
    rows = history([(0, None, 1.0), (1, None, 0.5), (2, None, 0.6), (3, None, 0.7), (4, None, 0.8), (5, None, INF)])
    report = analyse(rows, monitor=None, mode="max")
    assert (report.diverging_since, report.rising_steps, report.recommended_step) == (2, 3, 1)
    assert report.lines() == [
        "loss rose 3 steps in a row since step 2: diverging",
        "inf in loss at step 5",
        "apply: step 1",
    ]


def test_nan_in_other_metrics_is_reported_but_not_diverging():
    rows = history([(0, 0.5, 1.0), (1, NAN, 0.9), (2, -INF, 0.8)])
    report = analyse(rows, monitor="acc", mode="max")
    assert report.nonfinite == [(1, "acc"), (2, "acc")] and not report.diverging
    assert report.nonfinite_kind == {(1, "acc"): "NaN", (2, "acc"): "-inf"}
    assert report.best_step == 0  # NaN/inf is never best
    assert "NaN in acc at step 1 (and 1 later step)" in report.lines()


def test_plateau():
    rows = history([(s, a, 1.0 - s / 100) for s, a in enumerate([0.5, 0.8, 0.7, 0.8, 0.79, 0.8])])
    report = analyse(rows, monitor="acc", mode="max", patience=4)
    assert report.best_step == 1  # ties do not count as improvement
    assert report.steps_since_improvement == 4 and report.plateau
    assert "acc has not improved for 4 steps (patience 4): plateau" in report.lines()
    assert not analyse(rows, monitor="acc", mode="max", patience=5).plateau
    assert not analyse(rows, monitor="acc", mode="max").plateau


def test_mode_min_and_missing_monitor_values():
    rows = history([(0, None, 0.9), (1, None, 0.4), (2, None, 0.4), (3, None, 0.6)], names=("val_loss", "loss"))
    report = analyse(rows, monitor="loss", mode="min")
    assert (report.best_step, report.best_value, report.steps_since_improvement) == (1, 0.4, 2)
    none_logged = analyse(rows, monitor="val_loss", mode="min")
    assert none_logged.best_step is None and none_logged.recommended_step == 3
    assert none_logged.lines()[0] == "no finite val_loss logged yet"


def test_empty_history():
    report = analyse([], monitor="acc", mode="max")
    assert report == Report(monitor="acc", mode="max")
    assert report.lines() == ["no metrics logged yet"]


def test_repeated_step_last_occurrence_wins():
    report = analyse([(0, {"acc": 0.9}), (0, {"acc": 0.1}), (1, {"acc": 0.2})], monitor="acc", mode="max")
    assert report.best_step == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "up"}, r"checkpoint\.mode must be one of 'min', 'max', got 'up'"),
        ({"mode": "max", "divergence_steps": 1}, r"checkpoint\.divergence_steps must be an integer >= 2, got 1"),
        ({"mode": "max", "patience": 0}, r"checkpoint\.patience must be a positive integer or null, got 0"),
    ],
)
def test_analyse_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        analyse(HEALTHY, monitor="acc", **kwargs)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ((5, "acc", 0.91, 0.93, "max", True), "step 5: acc improved from 0.91 to 0.93 (best kept)"),
        ((6, "acc", 0.93, 0.93, "max", False), "step 6: acc did not improve from 0.93"),
        ((6, "acc", 0.93, 0.5, "max", True), "step 6: acc did not improve from 0.93"),
        ((0, "acc", None, 0.5, "max", True), "step 0: acc improved from -inf to 0.5 (best kept)"),
        ((0, "loss", None, 0.5, "min", True), "step 0: loss improved from inf to 0.5 (best kept)"),
        ((2, "loss", 0.5, 0.25, "min", False), "step 2: loss improved from 0.5 to 0.25"),
        ((3, "loss", 0.123456, 0.1234449, "min", True), "step 3: loss improved from 0.1235 to 0.1234 (best kept)"),
        ((4, "loss", 0.5, NAN, "min", True), "step 4: loss did not improve from 0.5 (loss is nan)"),
        ((4, "acc", None, INF, "max", True), "step 4: acc did not improve from -inf (acc is inf)"),
    ],
)
def test_improvement_line(args, line):
    assert improvement_line(*args) == line


def test_improvement_line_rejects_bad_mode():
    with pytest.raises(ConfigError, match=r"checkpoint\.mode must be one of 'min', 'max', got 'up'"):
        improvement_line(0, "acc", None, 0.5, "up", True)
