"""checks: one message per mistake, naming the key, the value (with its type) and the fix."""

from __future__ import annotations

import pytest

from expckpt.policy.checks import check_divergence_steps, check_mode, check_patience, fail, show
from expckpt.errors import ConfigError


def test_show_writes_ints_and_none_bare_and_everything_else_with_its_type() -> None:
    assert show(3) == "3" and show(None) == "None"
    assert show("up") == "'up' (str)"
    assert show(True) == "True (bool)"  # a bool is not the integer it subclasses
    assert show(2.0) == "2.0 (float)" and show([1]) == "[1] (list)"


def test_fail_raises_one_config_error_carrying_the_key_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        fail("checkpoint.keep_last", -1, "a non-negative integer", "use 0 to keep none")
    assert str(info.value) == "checkpoint.keep_last must be a non-negative integer, got -1; use 0 to keep none"
    assert (info.value.key, info.value.value) == ("checkpoint.keep_last", -1)


@pytest.mark.parametrize("value", ["min", "max"])
def test_a_mode_is_min_or_max(value: str) -> None:
    check_mode(value)


@pytest.mark.parametrize(("value", "shown"), [("up", "'up' (str)"), ("MAX", "'MAX' (str)"), (None, "None"), (1, "1")])
def test_any_other_mode_is_refused_with_the_fix(value: object, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_mode(value, key="report --mode")
    assert str(info.value) == (
        f"report --mode must be one of 'min', 'max', got {shown}; "
        "use 'max' when higher is better (accuracy) or 'min' when lower is better (loss)"
    )


def test_divergence_steps_is_an_integer_of_at_least_two() -> None:
    check_divergence_steps(2)
    check_divergence_steps(10)
    for bad, shown in [(1, "1"), (0, "0"), (True, "True (bool)"), (2.0, "2.0 (float)"), ("3", "'3' (str)")]:
        with pytest.raises(ConfigError) as info:
            check_divergence_steps(bad)
        assert str(info.value) == (
            f"checkpoint.divergence_steps must be an integer >= 2, got {shown}; "
            "use 3 to call 3 rises in a row diverging (1 rise is noise)"
        )


def test_patience_is_null_or_a_positive_integer() -> None:
    check_patience(None)
    check_patience(1)
    for bad, shown in [(0, "0"), (-5, "-5"), (False, "False (bool)"), (1.5, "1.5 (float)")]:
        with pytest.raises(ConfigError) as info:
            check_patience(bad)
        assert str(info.value) == (
            f"checkpoint.patience must be a positive integer or null, got {shown}; "
            "use e.g. 10, or null for no plateau check"
        )
