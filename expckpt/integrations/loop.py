"""What every framework adapter shares: one run's dvclive ``Live`` and the core, per completed step.

A framework (Lightning, the HF ``Trainer``, a torchrun loop, a sharded DCP loop) decides when a
step is complete and which metrics it has; ``StepLog`` then does what
``CheckpointLive.next_step`` does for a hand-written loop: logs the metrics at that step with
dvclive (rank 0 only), syncs its files (a checkpoint commit carries them), and hands the step to
the core ``Checkpointer``, which decides, saves, publishes ``<exp>@<step>`` and applies retention.
``plain()`` turns framework state into what ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from expckpt.train.checkpointer import Checkpointer, Decision
from expckpt.train.resume import Resumed
from expckpt.policy.watch import flatten_metrics

__all__ = ["StepLog", "plain", "scalar_metrics"]

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


def plain(value: Any, dropped: list[str] | None = None, where: str = "") -> Any:
    """``value`` with only what ``torch.load(weights_only=True)`` loads: tensors, numbers, strings,
    dicts, lists, tuples. Mapping subclasses become dicts, NumPy scalars numbers; anything else
    (a pickled class instance, a function) is left out and its path added to ``dropped``.
    """
    if isinstance(value, _PLAIN):
        return value
    if hasattr(value, "item") and type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                _drop(dropped, f"{where}[{key!r}]")
                continue
            converted = plain(item, dropped, f"{where}[{key!r}]")
            if converted is not _DROPPED:
                out[key] = converted
        return out
    if isinstance(value, (list, tuple)):
        items = [plain(item, dropped, f"{where}[{i}]") for i, item in enumerate(value)]
        items = [None if item is _DROPPED else item for item in items]  # keep positions
        return items if isinstance(value, list) else tuple(items)
    _drop(dropped, where)
    return _DROPPED


_DROPPED = object()


def _drop(dropped: list[str] | None, where: str) -> None:
    if dropped is not None:
        dropped.append(where)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar values (numbers, one-element tensors) of a framework's metrics dict, as floats
    (``step`` included: a framework's own step is a metric here, unlike in dvclive's summary)."""
    return flatten_metrics(_unwrapped(metrics), skip=frozenset())


def _unwrapped(value: Any) -> Any:
    """One-element tensors as Python numbers (at any depth); other tensors as None (skipped)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, Mapping):
        return {str(k): _unwrapped(v) for k, v in value.items()}
    return value


class StepLog:
    """One run: restore, then per completed step log metrics with dvclive and hand it to the core.

    Under torchrun every rank makes the same calls (the core's are collective); only rank 0
    writes dvclive's files.
    """

    def __init__(self, checkpointer: Checkpointer, state: Any) -> None:
        self.checkpointer = checkpointer
        self.state = state
        self.live: Any = None
        self.resumed: Resumed | None = None

    @property
    def start(self) -> int:
        """The first step to train (0 on a fresh start)."""
        return self.resumed.step + 1 if self.resumed is not None else 0

    def restore(self) -> Resumed | None:
        """Load the checkpoint to resume from (if any), then open dvclive at the step after it."""
        self.resumed = self.checkpointer.restore(self.state)
        if self.checkpointer.coord.is_main:
            from dvclive import Live

            resume = self.resumed is not None
            self.live = Live(
                dir=self.checkpointer.live_dir, dvcyaml=None, save_dvc_exp=False, resume=resume, report=None
            )
            if resume:
                self.live.step = self.start
        return self.resumed

    def completed(self, step: int, metrics: Mapping[str, Any]) -> Decision:
        """Step ``step`` is complete with ``metrics``: log and checkpoint it."""
        values = scalar_metrics(metrics)
        if self.live is not None:
            self.live.step = step
            for name, value in values.items():
                self.live.log_metric(name, value)
            self.live.next_step()
        return self.checkpointer.save(self.state, step, values)

    def finish(self) -> None:
        """Training ended normally: save the last step if the policy skipped it, and wait."""
        try:
            self.checkpointer.finish(self.state)
        finally:
            self.close()

    def close(self) -> None:
        """Training failed or was stopped: wait for writes under way, keep what is complete."""
        try:
            self.checkpointer.close()
        finally:
            if self.live is not None:
                self.live.end()
                self.live = None
