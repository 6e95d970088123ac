"""What every framework adapter shares: one run's dvclive ``Live`` and ``Checkpointer`` per step.

A framework (Lightning, the HF ``Trainer``, a torchrun loop) decides when a step is complete
and which metrics it has; ``StepLog`` then does what ``CheckpointLive.next_step`` does for a
hand-written loop: logs the metrics at that step with dvclive, syncs its files (a checkpoint
commit carries them), and hands the step to the checkpointer, which saves per the save policy,
publishes ``<exp>@<step>`` and applies retention.

It also holds the small shims that let the adapters work with both shapes of the core API
(``step_completed`` today, ``save`` returning a decision tomorrow; ``TrainingState`` with fixed
slots today, any named stateful object tomorrow) and ``plain()``, which turns framework state
into what ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from expckpt.checkpointer import StopTraining
from expckpt.state import TrainingState
from expckpt.watch import flatten_metrics

__all__ = ["CheckpointerLike", "StepLog", "plain", "save_step", "scalar_metrics", "training_state"]


class CheckpointerLike(Protocol):
    """``Checkpointer`` or ``DistributedCheckpointer``: what an adapter calls (and ``save`` or,
    in today's core, ``step_completed``)."""

    def restore(self, state: TrainingState) -> Any: ...
    def finish(self, state: TrainingState) -> None: ...
    def close(self) -> None: ...


def save_step(checkpointer: Any, state: TrainingState, step: int, metrics: Mapping[str, float]) -> bool:
    """Hand a completed step to the checkpointer; True when training should stop."""
    save = getattr(checkpointer, "save", None) or checkpointer.step_completed
    try:
        decision = save(state, step, metrics)
    except StopTraining:  # today's way of saying "stop" (divergence or plateau, if configured)
        return True
    return bool(getattr(decision, "stop", False))


def training_state(model: torch.nn.Module, **objects: Any) -> TrainingState:
    """``TrainingState(model=..., name=obj, ...)``; objects need ``state_dict``/``load_state_dict``.

    The core is moving to stateful objects by name; until then, the one framework object an
    adapter adds (its loop state) rides in the ``scaler`` slot, which only calls those two methods.
    """
    given = {k: v for k, v in objects.items() if v is not None}
    try:
        return TrainingState(model=model, **given)
    except TypeError:
        known: dict[str, Any] = {k: given.pop(k) for k in ("optimizer", "scheduler") if k in given}
        if len(given) > 1:
            raise
        if given:
            known["scaler"] = next(iter(given.values()))
        return TrainingState(model=model, **known)


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
    """One run: restore, then per completed step log metrics with dvclive and save a checkpoint.

    ``log=False`` (every torchrun rank but 0) keeps the checkpointer calls, which all ranks must
    make together, and writes no dvclive files.
    """

    def __init__(self, checkpointer: Any, state: TrainingState, *, log: bool = True, live_dir: str | None = None) -> None:
        self.checkpointer = checkpointer
        self.state = state
        self.log = log
        self.live_dir: str = live_dir or getattr(checkpointer, "live_dir", None) or "dvclive"
        self.live: Any = None
        self.resumed: Any = None

    def restore(self) -> Any:
        """Load the checkpoint to resume from (if any), then open dvclive at the step after it."""
        self.resumed = self.checkpointer.restore(self.state)
        core = getattr(self.checkpointer, "checkpointer", self.checkpointer)
        if self.resumed is not None and self.log and not hasattr(core, "resumed"):  # newer cores say it themselves
            record = getattr(self.resumed, "record", None)
            origin = f" ({record.name})" if record is not None else ""
            print(f"Resuming from {getattr(core, 'rel_path', 'model.pt')}{origin}: {self.state.step + 1} steps done", flush=True)
        if self.log:
            from dvclive import Live

            resume = self.state.step >= 0
            self.live = Live(dir=self.live_dir, dvcyaml=None, save_dvc_exp=False, resume=resume, report=None)
            if resume:
                self.live.step = self.state.step + 1
        return self.resumed

    def completed(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Step ``step`` is complete with ``metrics``: log and checkpoint it; True = stop training."""
        values = scalar_metrics(metrics)
        if self.live is not None:
            self.live.step = step
            for name, value in values.items():
                self.live.log_metric(name, value)
            self.live.next_step()
        return save_step(self.checkpointer, self.state, step, values)

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
