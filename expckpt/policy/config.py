"""The ``checkpoint:`` section of params.yaml, validated, and the policies it describes.

``CheckpointConfig.from_params(section)`` is the one function that reads the section; everything
else gets a ``CheckpointConfig`` and asks it for ``save_policy()`` and ``keep_policy()``::

    checkpoint:
      regime: normal        # short | normal | long: a preset for the keys below
      every: 1              # save every N-th step (steps N-1, 2N-1, ...); 0 = checkpointing off
      every_minutes: null   # also save when this many minutes passed since the last save
      keep_last: 10         # keep the N most recent; null = keep all
      keep_best: 1          # also keep the K best by `monitor` (0 = none)
      monitor: val_acc      # metric for keep_best and patience
      mode: max             # max: higher is better; min: lower is better
      async: false          # save in the background
      when_busy: wait       # async, a save due while earlier ones are still being written: wait | skip
      on_divergence: warn   # warn | stop
      divergence_steps: 3   # this many rises in a row of divergence_metric = diverging
      divergence_metric: loss
      patience: null        # steps without improvement of `monitor` before a plateau warning
      push: null            # a Git remote (e.g. origin): push each checkpoint there and to the default DVC remote
      init_from: null       # exp@step | exp | commit | path/to/model.pt: a fresh trial from those weights
      init_restore: []      # what else to carry from init_from: optimizer, scheduler, rng, ... (by name)
      init_strict: true     # false: load the keys whose shapes match, report the rest
      pause_signals: [SIGTERM, SIGUSR1]  # pause at the next batch boundary (SIGINT still stops at once)
      pause_deadline: 60    # seconds to reach that boundary and save before exiting anyway

Regimes (presets; keys written in the section override them):

    ======  =====  =============  =========  =========
    regime  every  every_minutes  keep_last  keep_best
    ======  =====  =============  =========  =========
    short   1      -              1          1
    normal  1      -              10         1
    long    5      30             20         3
    ======  =====  =============  =========  =========

Decisions:

- A preset's ``keep_best`` applies only when ``monitor`` is set; without a monitor it becomes 0
  (there is nothing to rank by). An explicit ``keep_best > 0`` without ``monitor`` is an error.
- ``every: 0`` turns all checkpointing off, including the time rule: a preset's
  ``every_minutes`` is dropped, and an explicit ``every_minutes`` with ``every: 0`` is an error.
- Presets are applied by ``from_params`` only; constructing ``CheckpointConfig(regime=...)``
  directly records the regime name but takes the other fields as given.
- Retention is always a union with the newest checkpoint: ``keep_policy()`` includes
  ``KeepNewest`` whatever else is configured (orbax #526, HF #15089).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

from expckpt.policy.checks import check_divergence_steps, check_mode, check_patience, fail, show
from expckpt.errors import ConfigError
from expckpt.policy.policy import AnyOf, keep_policy
from expckpt.text import is_printable
from expckpt.policy.saving import AnyOfSave, EveryMinutes, EverySteps, Never, OnEvents, SavePolicy

__all__ = ["RECORDED", "REGIMES", "CheckpointConfig"]

REGIMES: Mapping[str, Mapping[str, object]] = MappingProxyType(
    {
        "short": MappingProxyType({"every": 1, "keep_last": 1, "keep_best": 1}),
        "normal": MappingProxyType({"every": 1, "keep_last": 10, "keep_best": 1}),
        "long": MappingProxyType({"every": 5, "every_minutes": 30, "keep_last": 20, "keep_best": 3}),
    }
)
"""Preset values per ``checkpoint.regime``, keyed by field name."""

RECORDED = (
    "every",
    "every_minutes",
    "keep_last",
    "keep_best",
    "monitor",
    "mode",
    "divergence_metric",
    "divergence_steps",
    "on_divergence",
    "patience",
)
"""The settings each checkpoint records (``settings`` in its ``expckpt-meta`` line): what the CLI's
``list``, ``report`` and ``gc`` read back as that experiment's own retention and ranking."""

PAUSE_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP")
"""Signals ``checkpoint.pause_signals`` may name (SIGINT always stops at once)."""
_PARAM_KEY = {"async_save": "async"}  # field name -> params.yaml key where they differ
_DEFAULT_DIVERGENCE_METRIC = "loss"
_REMOTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
"""A Git remote name as expckpt accepts it: no leading ``-`` (never an option), no spaces or URL."""
_REGIME_FIX = "pick one of them, or remove checkpoint.regime and set the keys yourself"


def _key(name: str) -> str:
    return f"checkpoint.{_PARAM_KEY.get(name, name)}"


def _fail(name: str, value: object, expect: str, fix: str) -> None:
    fail(_key(name), value, expect, fix)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value: object, allowed: tuple[str, ...], fix: str) -> None:
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        _fail(name, value, f"one of {listed}", fix)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Validated checkpoint settings; build it with ``from_params``."""

    every: int = 1
    """Save every ``every``-th step (steps every-1, 2*every-1, ...); 0 turns checkpointing off."""
    every_minutes: float | None = None
    """Also save when this many minutes passed since the last save; None = by steps only."""
    keep_last: int | None = 10
    """Keep the ``keep_last`` most recent checkpoints (>= 1); None keeps all."""
    keep_best: int = 0
    """Also keep the ``keep_best`` best checkpoints by ``monitor`` (>= 0; 0 = none)."""
    monitor: str | None = None
    """The metric ranking checkpoints for ``keep_best`` and ``patience``; required when they are used."""
    mode: str = "max"
    """``"max"`` when a higher ``monitor`` is better (accuracy), ``"min"`` when lower is (loss)."""
    regime: str | None = None
    """The preset (``short``, ``normal``, ``long``) ``from_params`` started from, if any."""
    async_save: bool = False
    """Save in the background (params key ``async``)."""
    when_busy: str = "wait"
    """With ``async``, when a save is due while earlier ones still hold every staging buffer:
    ``"wait"`` until the oldest is written (training pauses only that long), or ``"skip"`` this
    save (training goes on at once; a later step is saved). Either is said once per run."""
    on_divergence: str = "warn"
    """What to do when training diverges or plateaus: ``"warn"`` or ``"stop"``."""
    divergence_steps: int = 3
    """Rises in a row of ``divergence_metric`` that count as diverging (>= 2)."""
    divergence_metric: str = _DEFAULT_DIVERGENCE_METRIC
    """The metric watched for divergence; NaN/inf in it always counts as diverging."""
    patience: int | None = None
    """Steps without improvement of ``monitor`` before a plateau warning (stops with ``on_divergence: stop``)."""
    push: str | None = None
    """A Git remote name: push each kept checkpoint (ref to it, objects to the default DVC remote)
    in the background while training goes on; None = don't (``DVC_EXP_AUTO_PUSH`` still can)."""

    init_from: str | None = None
    """Start a fresh trial (step 0, fresh optimizer, scheduler, RNG, metrics) from this checkpoint's
    weights: ``exp@step``, ``exp`` (its newest checkpoint), a commit, or a path to a file."""
    init_restore: tuple[str, ...] = ()
    """With ``init_from``: names of the state's objects to carry as well (``optimizer``,
    ``scheduler``, ...); ``rng`` carries the RNG states."""
    init_strict: bool = True
    """With ``init_from``: refuse weights whose keys or shapes differ (false: load what matches)."""
    pause_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    """Signals that pause training at the next batch boundary (saved, published, exit 75)."""
    pause_deadline: float = 60.0
    """Seconds a requested pause may take to reach a batch boundary and save before the run exits."""

    def __post_init__(self) -> None:
        self._check_init_and_pause()
        if not _is_int(self.every) or self.every < 0:
            _fail(
                "every",
                self.every,
                "a non-negative integer",
                "use 1 to save every step, N to save every N-th step, or 0 to turn checkpointing off",
            )
        m = self.every_minutes
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0):
            _fail(
                "every_minutes",
                m,
                "a positive number of minutes or null",
                "use e.g. 30 to also save every half hour, or null to save by steps only",
            )
        if self.keep_last is not None and (not _is_int(self.keep_last) or self.keep_last < 1):
            _fail("keep_last", self.keep_last, "a positive integer or null (keep all)", "use 1 to keep only the newest")
        if not _is_int(self.keep_best) or self.keep_best < 0:
            _fail(
                "keep_best",
                self.keep_best,
                "a non-negative integer",
                "use 0 to keep no best checkpoints, or 1 to keep the single best",
            )
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor):
            _fail(
                "monitor", self.monitor, "a metric name or null", "use the name of a metric the run logs, e.g. val_loss"
            )
        check_mode(self.mode)
        if self.regime is not None:
            _check_choice("regime", self.regime, tuple(REGIMES), _REGIME_FIX)
        if not isinstance(self.async_save, bool):
            _fail("async_save", self.async_save, "true or false", "use true to save in the background")
        _check_choice(
            "when_busy",
            self.when_busy,
            ("wait", "skip"),
            "use 'wait' to pause training until the previous checkpoint is written,"
            " or 'skip' to skip checkpoints that come too soon",
        )
        _check_choice(
            "on_divergence",
            self.on_divergence,
            ("warn", "stop"),
            "use 'warn' to log a warning or 'stop' to end the run",
        )
        check_divergence_steps(self.divergence_steps)
        if not isinstance(self.divergence_metric, str) or not self.divergence_metric:
            _fail("divergence_metric", self.divergence_metric, "a metric name", "use e.g. 'loss'")
        check_patience(self.patience)
        if self.push is not None and (not isinstance(self.push, str) or not _REMOTE_NAME.fullmatch(self.push)):
            _fail(
                "push",
                self.push,
                "the name of a Git remote or null",
                "use a name `git remote -v` lists, e.g. origin (add one with `git remote add origin <url>`)",
            )
        self._check_combinations()

    def _check_init_and_pause(self) -> None:
        if self.init_from is not None and (
            not isinstance(self.init_from, str) or not self.init_from.strip() or not is_printable(self.init_from)
        ):
            _fail(
                "init_from",
                self.init_from,
                "a checkpoint (exp@step, exp, a commit) or a file path",
                "use e.g. checkpoint.init_from=tidy-owl@5 (see `expckpt list`), or null",
            )
        restore = self.init_restore
        if restore is None:
            restore = ()
        if (
            isinstance(restore, str)
            or not isinstance(restore, (list, tuple))
            or not all(isinstance(n, str) and n.isidentifier() for n in restore)
        ):
            _fail(
                "init_restore",
                self.init_restore,
                "a list of state names",
                "use e.g. [optimizer, scheduler], or [] to carry only the weights",
            )
        object.__setattr__(self, "init_restore", tuple(restore))
        if not isinstance(self.init_strict, bool):
            _fail(
                "init_strict",
                self.init_strict,
                "true or false",
                "use false to load only the weights whose shapes match",
            )
        sigs = self.pause_signals
        if sigs is None:
            sigs = ()
        if (
            isinstance(sigs, str)
            or not isinstance(sigs, (list, tuple))
            or not all(isinstance(n, str) and n in PAUSE_SIGNALS for n in sigs)
        ):
            _fail(
                "pause_signals",
                self.pause_signals,
                f"a list of {', '.join(PAUSE_SIGNALS)}",
                "use e.g. [SIGTERM, SIGUSR1], or [] to let them stop training at once",
            )
        object.__setattr__(self, "pause_signals", tuple(sigs))
        d = self.pause_deadline
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
            _fail(
                "pause_deadline",
                d,
                "a positive number of seconds",
                "use e.g. 60 (SLURM's --signal=USR1@90 gives 90 s before the kill)",
            )

    def _check_combinations(self) -> None:
        if self.every == 0 and self.every_minutes is not None:
            raise ConfigError(
                f"checkpoint.every_minutes is {self.every_minutes!r} but checkpoint.every is 0 (checkpointing "
                "off); remove checkpoint.every_minutes, or set checkpoint.every to 1 or more",
                key=_key("every_minutes"),
                value=self.every_minutes,
            )
        if self.monitor is None and self.keep_best > 0:
            raise ConfigError(
                f"checkpoint.monitor is required when checkpoint.keep_best is {self.keep_best}; set "
                "checkpoint.monitor to the metric to rank by (e.g. val_loss), or set keep_best to 0",
                key=_key("monitor"),
                value=None,
            )
        if self.monitor is None and self.patience is not None:
            raise ConfigError(
                f"checkpoint.monitor is required when checkpoint.patience is {self.patience}; set "
                "checkpoint.monitor to the metric whose improvement patience waits for, or remove patience",
                key=_key("monitor"),
                value=None,
            )

    @classmethod
    def from_params(cls, section: Mapping[str, object] | None) -> CheckpointConfig:
        """Read the ``checkpoint:`` section of params.yaml (None or missing = all defaults)."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"checkpoint must be a mapping of keys to values, got {show(section)}; "
                "write e.g. 'checkpoint: {every: 1, keep_last: 10}'",
                key="checkpoint",
                value=section,
            )
        by_key = {_PARAM_KEY.get(f.name, f.name): f.name for f in fields(cls)}
        explicit: dict[str, object] = {}
        for key, value in section.items():
            if key not in by_key:
                raise _unknown_key(key, list(by_key))
            explicit[by_key[key]] = value
        values: dict[str, object] = {}
        regime = explicit.get("regime")
        if regime is not None:
            _check_choice("regime", regime, tuple(REGIMES), _REGIME_FIX)
            values.update(REGIMES[regime])  # type: ignore[index]
            if explicit.get("monitor") is None:
                values["keep_best"] = 0
            if _is_int(explicit.get("every")) and explicit["every"] == 0:
                values.pop("every_minutes", None)
        values.update(explicit)
        return cls(**values)  # type: ignore[arg-type]

    def recorded(self) -> dict[str, object]:
        """The effective settings a checkpoint records (``RECORDED``), as params.yaml keys."""
        return {name: getattr(self, name) for name in RECORDED}

    def save_policy(self, *, start: float | None = None) -> SavePolicy:
        """When to save. ``start`` (the run's start, unix seconds) starts the ``every_minutes`` clock."""
        if self.every == 0:
            return Never()
        rules: list[SavePolicy] = [EverySteps(n=self.every), OnEvents()]
        if self.every_minutes is not None:
            rules.append(EveryMinutes(minutes=self.every_minutes, start=start))
        return AnyOfSave(policies=tuple(rules))

    def keep_policy(self) -> AnyOf:
        """What to keep: keep_last (or all) and keep_best, always united with the newest checkpoint
        (``policy.keep_policy``, the same function ``expckpt gc`` uses)."""
        return keep_policy(keep_last=self.keep_last, keep_best=self.keep_best, monitor=self.monitor, mode=self.mode)

    def check_metrics(self, logged: Collection[str]) -> None:
        """Raise ConfigError unless the run logs the metrics this config watches.

        ``monitor`` is checked when set; ``divergence_metric`` when it was changed from ``loss``
        or when ``on_divergence`` is ``stop`` (a default that matches nothing only loses warnings).
        """
        names = sorted(logged)
        checks = [("monitor", self.monitor)]
        if self.on_divergence == "stop" or self.divergence_metric != _DEFAULT_DIVERGENCE_METRIC:
            checks.append(("divergence_metric", self.divergence_metric))
        for name, metric in checks:
            if metric is None or metric in logged:
                continue
            key = _key(name)
            close = difflib.get_close_matches(metric, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{key} is {metric!r}, which this run does not log (it logs: {', '.join(names) or 'nothing'}); "
                f"set {key} to one of them{hint}",
                key=key,
                value=metric,
            )


def _unknown_key(key: object, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1) if isinstance(key, str) else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"checkpoint.{key} is not a checkpoint setting; {hint}valid keys: {', '.join(sorted(valid))}",
        key=f"checkpoint.{key}",
        value=key,
    )
