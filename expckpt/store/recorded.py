"""Each experiment's own checkpoint settings, as its checkpoints recorded them: the CLI's defaults.

A run records its effective settings (``monitor``, ``mode``, ``keep_last``, ``keep_best``,
``every``, ...; ``config.RECORDED``) in every checkpoint's ``expckpt-meta`` line, whichever front
end derived them (params.yaml, a Hugging Face ``TrainingArguments``, a Lightning callback).
``expckpt list``, ``report`` and ``gc`` rank and keep by those, not by the workspace's params.yaml,
which may have changed since; explicit flags still win, and checkpoints written before settings
were recorded fall back to params.yaml.

    settings = settings_of(chain, fallback=lambda: workspace_config)
    check_logged("accuracy", logged_metrics(chain), chain.exp, flag="--metric")   # or one clear error
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable, Mapping

from expckpt.store.catalog import Chain
from expckpt.policy.config import CheckpointConfig
from expckpt.errors import ConfigError
from expckpt.policy.policy import AnyOf, keep_policy

__all__ = ["check_logged", "gc_policy", "logged_metrics", "settings_of"]


def settings_of(chain: Chain, fallback: Callable[[], CheckpointConfig]) -> CheckpointConfig:
    """The settings the newest run of ``chain`` recorded; ``fallback()`` when none did."""
    for record in reversed(chain.records):
        if record.settings is not None:
            return record.settings
    return fallback()


def logged_metrics(chain: Chain, history: Iterable[tuple[int, Mapping[str, float]]] = ()) -> set[str]:
    """Every metric name ``chain``'s checkpoints (and ``history``, if given) logged."""
    names = {m for r in chain.records for m in r.metrics}
    names.update(m for _, metrics in history for m in metrics)
    return names


def check_logged(metric: str, logged: Collection[str], exp: str, *, flag: str) -> None:
    """Raise one clear ``ConfigError`` when ``metric`` is not among the ``logged`` names of ``exp``.

    A Hugging Face user types ``accuracy`` where the Trainer logged ``eval_accuracy``: the message
    names the metric that was logged.
    """
    if metric in logged:
        return
    names = sorted(logged)
    close = difflib.get_close_matches(metric, names, n=1, cutoff=0.6)
    if f"eval_{metric}" in logged:  # the Trainer's own spelling of an evaluation metric
        close = [f"eval_{metric}"]
    hint = f"; did you mean {flag} {close[0]}?" if close else f"; pass {flag} with one of them"
    raise ConfigError(
        f"experiment {exp!r} logged no metric {metric!r} (it logged: {', '.join(names) or 'nothing'}){hint}",
        key=flag,
        value=metric,
    )


def gc_policy(
    chain: Chain,
    *,
    keep_last: int | None,
    keep_best: int | None,
    metric: str | None,
    mode: str | None,
) -> AnyOf:
    """``expckpt gc``'s rules for one experiment: the flags, and where a flag is not given, the
    best-checkpoint settings the experiment recorded (so ``gc --keep-last 1`` still keeps each
    experiment's best). Without ``--keep-last`` every checkpoint in scope is kept, as before."""
    recorded = settings_of(chain, fallback=lambda: CheckpointConfig(keep_best=0))
    best = keep_best if keep_best is not None else recorded.keep_best
    monitor = metric or recorded.monitor
    if best and not monitor:
        raise ConfigError(
            f"--keep-best needs --metric for experiment {chain.exp!r} (it recorded no monitor); "
            "name the metric to rank by, e.g. --metric val_loss",
            key="metric",
        )
    if best and metric:
        check_logged(metric, logged_metrics(chain), chain.exp, flag="--metric")
    return keep_policy(keep_last=keep_last, keep_best=best, monitor=monitor, mode=mode or recorded.mode)
