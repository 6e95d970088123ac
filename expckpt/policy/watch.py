"""Watching training as it goes: best value, divergence and plateau, in O(1) per step.

The watch is kept apart from saving (Lightning keeps ``EarlyStopping`` apart from
``ModelCheckpoint``): it observes each completed step's metrics and *returns* what it saw, with
an optional stop reason, and the checkpointer decides what to do. Its state travels inside the
checkpoint under expckpt's own key (never in the user's objects), so a resumed run keeps its
best value and its counters.

The definitions are those of ``expckpt.policy.report`` (which reads a whole history after the fact):
diverging = ``divergence_metric`` went NaN/inf, or rose strictly ``divergence_steps`` times in a
row; plateau = ``patience`` steps since ``monitor`` last improved. With the default
``divergence_metric`` (``loss``) a run that logs no ``loss`` is watched on the first of the usual
names frameworks give it that it logs (``LOSS_NAMES``, ``divergence_metric_for``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from expckpt.policy.ranking import better, finite, number

__all__ = [
    "LOSS_NAMES",
    "Observation",
    "TrainingWatch",
    "divergence_metric_for",
    "divergence_off_line",
    "flatten_metrics",
]

DEFAULT_LOSS = "loss"
LOSS_NAMES = (
    "loss",
    "train_loss",
    "train/loss",
    "train_loss_epoch",
    "train/loss_epoch",
    "train/epoch/loss",
    "eval_loss",
    "eval/loss",
    "val_loss",
    "val/loss",
    "valid_loss",
    "validation_loss",
    "test_loss",
)
"""What plain loops, Lightning, the HF Trainer, Keras and dvclive's loggers call the loss, training first."""


def divergence_metric_for(configured: str, logged: Collection[str]) -> str | None:
    """The metric watched for divergence among ``logged``: ``configured`` when logged; for the
    default ``loss``, else the first of ``LOSS_NAMES`` logged; None when there is none."""
    if configured in logged:
        return configured
    if configured != DEFAULT_LOSS:
        return None
    return next((name for name in LOSS_NAMES if name in logged), None)


def divergence_off_line(configured: str) -> str:
    """What to say when ``divergence_metric_for`` found nothing in a run's metrics."""
    if configured != DEFAULT_LOSS:
        return f"expckpt: divergence detection is off: this run logs no metric named {configured!r}"
    return (
        "expckpt: divergence detection is off: this run logs no loss metric (looked for "
        f"{', '.join(LOSS_NAMES[:3])}, {LOSS_NAMES[6]}, {LOSS_NAMES[8]} and the like); set"
        " checkpoint.divergence_metric to the metric it logs"
    )


@dataclass(frozen=True)
class Observation:
    """What one step showed."""

    improved: bool = False
    """``monitor`` reached a new best at this step."""
    previous_best: float | None = None
    """The best value before this step (None: none yet)."""
    value: float | None = None
    """This step's ``monitor`` value (None: not logged)."""
    problems: tuple[str, ...] = ()
    """``"diverging"`` and/or ``"plateau"`` when they hold at this step."""
    warnings: tuple[str, ...] = ()
    """Lines to print once: each problem the first time it shows."""
    stop: str | None = None
    """Why training should stop now (``on_divergence: stop``), or None to go on."""


@dataclass
class _Counters:
    best_value: float | None = None
    best_step: int | None = None
    last_finite: float | None = None
    rises: int = 0
    rise_start: int | None = None
    nonfinite_step: int | None = None
    warned: list[str] = field(default_factory=list)


class TrainingWatch:
    """Observes ``(step, metrics)`` in step order; see the module docstring."""

    def __init__(
        self,
        *,
        monitor: str | None = None,
        mode: str = "max",
        divergence_metric: str = "loss",
        divergence_steps: int = 3,
        patience: int | None = None,
        stop_on_problem: bool = False,
    ) -> None:
        self.monitor = monitor
        self.mode = mode
        self.divergence_metric = divergence_metric
        self.divergence_steps = divergence_steps
        self.patience = patience
        self.stop_on_problem = stop_on_problem
        self._c = _Counters()
        self._resolved = False

    @property
    def best(self) -> tuple[float, int] | None:
        """``(value, step)`` of the best ``monitor`` so far."""
        if self._c.best_value is None or self._c.best_step is None:
            return None
        return self._c.best_value, self._c.best_step

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Observation:
        c = self._c
        if metrics and not self._resolved:  # the first step's names decide (the report does the same)
            self._resolved = True
            self.divergence_metric = divergence_metric_for(self.divergence_metric, metrics) or self.divergence_metric
        previous = c.best_value
        value = metrics.get(self.monitor) if self.monitor else None
        improved = self.monitor is not None and better(value, previous, self.mode)
        if improved:
            c.best_value, c.best_step = finite(value), step
        problems = []
        if self._diverging(step, metrics):
            problems.append("diverging")
        if self.patience is not None and c.best_step is not None and step - c.best_step >= self.patience:
            problems.append("plateau")
        warnings = tuple(self._describe(p, step) for p in problems if p not in c.warned)
        c.warned.extend(p for p in problems if p not in c.warned)
        stop = ", ".join(problems) if problems and self.stop_on_problem else None
        return Observation(
            improved=improved,
            previous_best=previous,
            value=number(value),
            problems=tuple(problems),
            warnings=warnings,
            stop=stop,
        )

    def _diverging(self, step: int, metrics: Mapping[str, Any]) -> bool:
        c = self._c
        if c.nonfinite_step is not None:
            return True  # values after the first NaN/inf are not read (as in the report)
        if self.divergence_metric not in metrics:
            return c.rises >= self.divergence_steps
        value = finite(metrics[self.divergence_metric])
        if value is None:
            if number(metrics[self.divergence_metric]) is not None:
                c.nonfinite_step = step
                return True
            return c.rises >= self.divergence_steps
        if c.last_finite is not None and value > c.last_finite:
            if c.rises == 0:
                c.rise_start = step
            c.rises += 1
        else:
            c.rises, c.rise_start = 0, None
        c.last_finite = value
        return c.rises >= self.divergence_steps

    def _describe(self, problem: str, step: int) -> str:
        c = self._c
        if problem == "plateau":
            return (
                f"step {step}: {self.monitor} has not improved for {step - (c.best_step or 0)} steps "
                f"(patience {self.patience}): plateau"
            )
        if c.nonfinite_step is not None:
            return f"step {step}: {self.divergence_metric} is NaN/inf since step {c.nonfinite_step}: diverging"
        return (
            f"step {step}: {self.divergence_metric} rose {c.rises} steps in a row since step {c.rise_start}: diverging"
        )

    def state_dict(self) -> dict[str, Any]:
        return asdict(self._c)

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        known = {k: v for k, v in saved.items() if k in _Counters.__dataclass_fields__}
        self._c = _Counters(**known)
        self._c.warned = list(self._c.warned)


def flatten_metrics(
    metrics: Mapping[str, Any], prefix: str = "", *, skip: frozenset[str] = frozenset({"step"})
) -> dict[str, float]:
    """dvclive's nested summary as ``{"train/loss": 0.3, ...}``: numbers only (not bools, not
    strings but dvclive's ``"nan"``/``"inf"``/``"-inf"``), keys named in ``skip`` (dvclive's
    ``step``) left out.

    expckpt's one metric flattener: the checkpointer, the sharded checkpointer and the framework
    adapters (``integrations.loop.scalar_metrics``) all read metrics through it.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/", skip=skip))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in skip:
            flat[name] = float(value)
        elif isinstance(value, str) and value in _NONFINITE and key not in skip:
            flat[name] = float(value)  # dvclive logs NaN and inf as these strings
    return flat


_NONFINITE = frozenset({"nan", "inf", "-inf"})
