"""Read a run's metric history: best step, NaN/inf, divergence, plateau, which step to apply.

``analyse(history, monitor=..., mode=...)`` takes ``(step, metrics)`` pairs in any order and
returns a ``Report``; ``Report.lines()`` is the human text. ``improvement_line`` is the Keras-style
one-liner printed when a step is logged.

Definitions:

- *best*: the step with the best finite ``monitor`` value (``mode`` max/min); on ties the
  earlier step. ``steps_since_improvement`` is ``last_step - best_step`` (in steps, not log rows).
- *diverging*: ``divergence_metric`` is NaN/inf at some step, or its last finite values rose
  strictly ``divergence_steps`` times in a row. ``diverging_since`` is the first step of that rise
  (the first step that was higher than the one before it), or the first NaN/inf step when there is
  no such rise. Values after the first NaN/inf are not read for the rise.
- *plateau*: ``patience`` is set and ``steps_since_improvement >= patience``.
- *recommended_step*: the best step when ``monitor`` has a finite value; otherwise the last step
  with a finite ``divergence_metric`` before ``diverging_since`` (or the last such step when not
  diverging, or ``last_step`` when that metric was never logged).
- When a step appears more than once in ``history``, its last occurrence wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from expckpt.policy.checks import check_divergence_steps, check_mode, check_patience
from expckpt.policy.ranking import better, finite, number
from expckpt.policy.watch import divergence_metric_for

__all__ = ["Report", "analyse", "improvement_line"]


@dataclass(frozen=True, kw_only=True)
class Report:
    """What a metric history says about a run."""

    monitor: str | None = None
    """The metric ranked for ``best_step`` (None: no ranking)."""
    mode: str = "max"
    """``"max"`` or ``"min"``: which direction of ``monitor`` is better."""
    divergence_metric: str = "loss"
    """The metric watched for divergence."""
    patience: int | None = None
    """Steps without improvement that make a plateau (None: no plateau check)."""
    best_step: int | None = None
    """Step with the best finite ``monitor`` value; None without monitor or finite values."""
    best_value: float | None = None
    """The ``monitor`` value at ``best_step``."""
    last_step: int | None = None
    """The highest step in the history; None when it is empty."""
    steps_since_improvement: int | None = None
    """``last_step - best_step``; None when there is no best."""
    nonfinite: list[tuple[int, str]] = field(default_factory=list)
    """``(step, metric)`` for every NaN/inf value, ordered by step then metric."""
    nonfinite_kind: dict[tuple[int, str], str] = field(default_factory=dict, repr=False)
    """``"NaN"``, ``"inf"`` or ``"-inf"`` for each entry of ``nonfinite``."""
    diverging: bool = False
    """``divergence_metric`` hit NaN/inf, or rose ``divergence_steps`` times in a row at the end."""
    diverging_since: int | None = None
    """First step of the rise (or first NaN/inf step); None when not diverging."""
    rising_steps: int = 0
    """How many times in a row the last finite ``divergence_metric`` values rose."""
    plateau: bool = False
    """``steps_since_improvement >= patience`` (only when patience is set)."""
    recommended_step: int | None = None
    """The step to apply: the best step, else the last sound step before divergence."""

    def lines(self) -> list[str]:
        """The report as short human-readable lines."""
        if self.last_step is None:
            return ["no metrics logged yet"]
        out: list[str] = []
        if self.monitor is not None:
            if self.best_step is None:
                out.append(f"no finite {self.monitor} logged yet")
            else:
                out.append(
                    f"best {self.monitor} {self.best_value:.4g} at step {self.best_step} "
                    f"({_ago(self.steps_since_improvement or 0)})"
                )
        if self.plateau:
            out.append(
                f"{self.monitor} has not improved for {self.steps_since_improvement} steps "
                f"(patience {self.patience}): plateau"
            )
        if self.diverging and self.rising_steps > 0:
            # A rise is only counted once it is long enough, so rising_steps > 0 means it is the cause.
            out.append(
                f"{self.divergence_metric} rose {self.rising_steps} steps in a row "
                f"since step {self.diverging_since}: diverging"
            )
        out.extend(self._nonfinite_lines())
        if self.recommended_step is not None:
            out.append(f"apply: step {self.recommended_step}")
        return out

    def _nonfinite_lines(self) -> list[str]:
        first: dict[str, tuple[int, int]] = {}  # metric -> (first step, count)
        for step, metric in self.nonfinite:
            start, count = first.get(metric, (step, 0))
            first[metric] = (start, count + 1)
        out = []
        for metric, (step, count) in first.items():
            kind = self.nonfinite_kind.get((step, metric), "NaN")
            more = f" (and {count - 1} later step{'s' if count > 2 else ''})" if count > 1 else ""
            cause = self.diverging and not self.rising_steps and metric == self.divergence_metric
            out.append(f"{kind} in {metric} at step {step}{more}" + (": diverging" if cause else ""))
        return out


def _ago(steps: int) -> str:
    if steps == 0:
        return "the latest step"
    return f"{steps} step{'s' if steps != 1 else ''} ago"


def _kind(value: object) -> str | None:
    """ "NaN"/"inf"/"-inf" for a non-finite number, None otherwise (finite or not a number)."""
    as_float = number(value)
    if as_float is None:
        return None
    if math.isnan(as_float):
        return "NaN"
    if math.isinf(as_float):
        return "inf" if as_float > 0 else "-inf"
    return None


def analyse(
    history: Sequence[tuple[int, Mapping[str, float]]],
    *,
    monitor: str | None,
    mode: str,
    divergence_metric: str = "loss",
    divergence_steps: int = 3,
    patience: int | None = None,
) -> Report:
    """Analyse ``(step, metrics)`` pairs (any order) into a ``Report``; see the module docstring."""
    check_mode(mode)
    check_divergence_steps(divergence_steps)
    check_patience(patience)
    by_step = dict(history)
    steps = sorted(by_step)
    first = next((by_step[s] for s in steps if by_step[s]), None)
    if first:  # the watch's rule: the first step's names decide
        divergence_metric = divergence_metric_for(divergence_metric, first) or divergence_metric
    if not steps:
        return Report(monitor=monitor, mode=mode, divergence_metric=divergence_metric, patience=patience)

    nonfinite, kinds = [], {}
    for step in steps:
        for metric in sorted(by_step[step]):
            kind = _kind(by_step[step][metric])
            if kind is not None:
                nonfinite.append((step, metric))
                kinds[(step, metric)] = kind

    best_step = best_value = None
    if monitor is not None:
        for step in steps:
            value = by_step[step].get(monitor)
            if better(value, best_value, mode):
                best_step, best_value = step, finite(value)
    last_step = steps[-1]
    since_best = None if best_step is None else last_step - best_step

    # The divergence metric up to (not including) its first NaN/inf.
    series: list[tuple[int, float]] = []
    first_bad = None
    for step in steps:
        if divergence_metric not in by_step[step]:
            continue
        value = finite(by_step[step].get(divergence_metric))
        if value is None:
            if _kind(by_step[step][divergence_metric]) is not None:
                first_bad = step
                break
            continue
        series.append((step, value))
    rising = 0
    while rising + 1 < len(series) and series[-1 - rising][1] > series[-2 - rising][1]:
        rising += 1
    diverging_since = None
    if rising >= divergence_steps:
        diverging_since = series[-rising][0]
    else:
        rising = 0
        diverging_since = first_bad
    diverging = diverging_since is not None

    recommended: int | None
    if best_step is not None:
        recommended = best_step
    elif series:
        sound = [s for s, _ in series if diverging_since is None or s < diverging_since]
        recommended = sound[-1] if sound else None
    else:
        recommended = None if diverging else last_step

    return Report(
        monitor=monitor,
        mode=mode,
        divergence_metric=divergence_metric,
        patience=patience,
        best_step=best_step,
        best_value=best_value,
        last_step=last_step,
        steps_since_improvement=since_best,
        nonfinite=nonfinite,
        nonfinite_kind=kinds,
        diverging=diverging,
        diverging_since=diverging_since,
        rising_steps=rising,
        plateau=patience is not None and since_best is not None and since_best >= patience,
        recommended_step=recommended,
    )


def improvement_line(step: int, metric: str, previous_best: float | None, value: float, mode: str, kept: bool) -> str:
    """Keras-style line: ``step 5: acc improved from 0.91 to 0.93 (best kept)`` or ``did not improve``.

    ``previous_best`` None (no value yet) reads as -inf for mode max and inf for mode min.
    A NaN/inf ``value`` never improves.
    """
    check_mode(mode)
    worst = -math.inf if mode == "max" else math.inf
    prev = worst if previous_best is None or math.isnan(previous_best) else previous_best
    finite = _kind(value) is None
    improved = finite and (value > prev if mode == "max" else value < prev)
    if improved:
        return f"step {step}: {metric} improved from {prev:.4g} to {value:.4g}" + (" (best kept)" if kept else "")
    tail = "" if finite else f" ({metric} is {value})"
    return f"step {step}: {metric} did not improve from {prev:.4g}{tail}"
