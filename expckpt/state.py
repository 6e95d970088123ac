"""The whole training state, captured and restored: model, optimizer, scheduler, RNGs, extras.

Everything in a captured state is a tensor, a number, a string or a container of those, so it
loads with ``torch.load(weights_only=True)``: a checkpoint never runs code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from expckpt.rng import capture_rng, restore_rng

__all__ = ["FORMAT", "TrainingState", "capture_rng", "optimizer_hparams", "restore_rng"]


FORMAT = "expckpt/1"


def optimizer_hparams(optimizer: Any) -> dict[str, Any]:
    """An optimizer's constructor settings (``lr``, ``weight_decay``, ...) that are plain values."""
    plain = (int, float, bool, str, type(None))
    defaults = getattr(optimizer, "defaults", None) or {}
    return {
        k: v
        for k, v in defaults.items()
        if isinstance(v, plain) or (isinstance(v, tuple) and all(isinstance(x, plain) for x in v))
    }


@dataclass(kw_only=True, eq=False)
class TrainingState:
    """What training needs to continue exactly where it stopped.

    ``step`` is the last completed dvclive step (-1 before the first); ``best`` holds the best
    monitored value so far (``{"metric", "value", "step"}``); ``extras`` is any user dict of
    plain values and tensors (a sampler position, a plateau counter, ...).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    scaler: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    step: int = -1

    def capture(self) -> dict[str, Any]:
        """The state as a dict of references (no copies: serialise it before training goes on)."""
        return {
            "format": FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng(),
            "best": dict(self.best) if self.best else None,
            "extras": dict(self.extras),
            "optimizer_hparams": optimizer_hparams(self.optimizer),
        }

    def restore(self, payload: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Load a captured state back (the model was checked against it beforehand).

        Optimizer settings chosen differently now than when the checkpoint was saved (say
        ``dvc exp run -S lr=0.001``) are kept: loading the optimizer's state would otherwise put
        the old values back silently. Returns them as ``{name: (saved, now)}``.
        """
        chosen = optimizer_hparams(self.optimizer)
        self.model.load_state_dict(payload["model"])
        if self.optimizer is not None and payload.get("optimizer") is not None:
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload.get("scheduler") is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and payload.get("scaler") is not None:
            self.scaler.load_state_dict(payload["scaler"])
        restore_rng(payload.get("rng") or {})
        self.best = dict(payload["best"]) if payload.get("best") else None
        self.extras.clear()
        self.extras.update(payload.get("extras") or {})
        self.step = int(payload.get("step", -1))
        saved = payload.get("optimizer_hparams")
        if not isinstance(saved, Mapping):
            return {}
        changed = {k: (saved[k], v) for k, v in chosen.items() if k in saved and saved[k] != v}
        self._apply_hparams({k: now for k, (_, now) in changed.items()})
        return changed

    def _apply_hparams(self, values: Mapping[str, Any]) -> None:
        if self.optimizer is None or not values:
            return
        for group in self.optimizer.param_groups:
            for key, value in values.items():
                group[key] = value
                if key == "lr" and "initial_lr" in group:
                    group["initial_lr"] = value
        if "lr" in values and isinstance(getattr(self.scheduler, "base_lrs", None), list):
            self.scheduler.base_lrs = [values["lr"]] * len(self.scheduler.base_lrs)
