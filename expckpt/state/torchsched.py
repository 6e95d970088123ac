"""The one place expckpt relies on torch LR-scheduler internals that have no public API.

``hparams`` rebuilds a restored schedule around a new learning rate (``dvc exp run -S lr=...``),
which needs two things torch does not offer publicly:

* the learning rate of the restored step, computed from the new base values: the closed form
  ``_get_closed_form_lr()`` where a scheduler has one, else ``get_lr()`` (public, but it warns
  outside ``step()``; that warning is silenced with a filter, a public means);
* ``get_last_lr()`` agreeing with the rebuilt rates before the next ``step()``: it returns
  ``_last_lr``, which only ``step()`` sets.

``tests/test_torchsched.py`` pins both on the installed torch for every scheduler it covers, so a
torch release that changes them fails that test with one line instead of resuming at a wrong
learning rate; at run time a missing internal is one ``ConfigError`` line.
"""

from __future__ import annotations

import warnings
from typing import Any

from expckpt.errors import ConfigError

__all__ = ["RECOMPUTED_WITHOUT_CLOSED_FORM", "can_recompute", "recompute_lrs", "set_last_lr"]

RECOMPUTED_WITHOUT_CLOSED_FORM = ("OneCycleLR", "LambdaLR", "CosineAnnealingWarmRestarts")
"""Schedulers whose ``get_lr()`` depends only on the step and base values, not the last rate."""
_GET_LR_WARNING = r"To get the last learning rate computed by the scheduler"


def can_recompute(scheduler: Any) -> bool:
    """Whether the rate of the restored step can be computed again from new base values."""
    return callable(getattr(scheduler, "_get_closed_form_lr", None)) or (
        type(scheduler).__name__ in RECOMPUTED_WITHOUT_CLOSED_FORM
    )


def recompute_lrs(scheduler: Any) -> list[float]:
    """The learning rate of each param group at the scheduler's current step."""
    closed_form = getattr(scheduler, "_get_closed_form_lr", None)
    if callable(closed_form):
        return list(closed_form())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GET_LR_WARNING, category=UserWarning)
        return list(scheduler.get_lr())


def set_last_lr(scheduler: Any, lrs: list[float]) -> None:
    """Make ``scheduler.get_last_lr()`` return ``lrs`` until its next ``step()``."""
    if not isinstance(getattr(scheduler, "_last_lr", None), list):
        raise ConfigError(
            f"this torch ({_torch_version()}) keeps no _last_lr on {type(scheduler).__name__}, which expckpt"
            " needs to rebuild the schedule for a new learning rate; keep the old settings to resume,"
            " or use the torch version the README names"
        )
    scheduler._last_lr = list(lrs)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
