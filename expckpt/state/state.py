"""The whole training state, captured and restored: any stateful objects, by name, plus RNGs.

    state = TrainingState(model=model, optimizer=optimizer, scheduler=scheduler,
                          sampler=sampler, ema=ema_weights, progress={"batches": 0})

Each named object is either *stateful* (has ``state_dict()`` and ``load_state_dict()``: modules,
optimizers, schedulers, GradScaler, samplers, your own classes) or a plain ``dict`` of values,
which is restored **in place** (nested dicts, lists, tensors and NumPy arrays keep their
identity, so a reference you hold stays the one that is saved). What is saved must load with
``torch.load(weights_only=True)``: tensors, numbers, strings, bytes, lists, tuples and dicts;
NumPy arrays and scalars are stored as tensors and come back as NumPy. Anything else is refused
at save time with one line naming the key.

The RNG states (Python, NumPy, torch, CUDA when in use) are captured with every checkpoint.
``restore(payload, defer_rng=True)`` keeps them until ``apply_rng()``: ``CheckpointLive`` puts
them back as the first step begins, so seeding after restoring cannot make a resume inexact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from expckpt.errors import ConfigError
from expckpt.state.hparams import Fresh, optimizer_hparams, reconcile, snapshot
from expckpt.state.rng import capture_rng, restore_rng
from expckpt.state.safe_values import decode, encode, restore_in_place

__all__ = ["FORMAT", "RESERVED", "TrainingState", "capture_rng", "optimizer_hparams", "restore_rng"]

FORMAT = "expckpt/1"
RESERVED = frozenset({"format", "step", "rng", "expckpt", "best", "optimizer_hparams"})
"""Top-level checkpoint keys that are not user objects."""


def _stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class TrainingState:
    """What training needs to continue exactly where it stopped; see the module docstring.

    ``step`` is the last completed step (-1 before the first). ``best`` is kept for scripts
    written against expckpt 0.1 (the training watch keeps its own best now).
    """

    def __init__(self, *, step: int = -1, best: dict[str, Any] | None = None, **objects: Any) -> None:
        self.step = step
        self.best = best
        self.objects: dict[str, Any] = {}
        self.library: dict[str, Any] = {}
        """expckpt's own state (the training watch), saved under the ``expckpt`` key."""
        self._pending_rng: Mapping[str, Any] | None = None
        for name, obj in objects.items():
            if obj is not None:
                self.add(name, obj)

    def add(self, name: str, obj: Any) -> None:
        """Track one more object under ``name``."""
        if name in RESERVED or not name.isidentifier():
            raise ConfigError(
                f"TrainingState cannot hold an object named {name!r} (reserved or not an identifier);"
                " pick another name",
                key=name,
            )
        if not (_stateful(obj) or isinstance(obj, dict)):
            raise ConfigError(
                f"TrainingState({name}=...) needs an object with state_dict() and load_state_dict(), or a dict;"
                f" got a {type(obj).__name__}; keep plain values in a dict, e.g. {name}={{'value': ...}}",
                key=name,
                value=type(obj).__name__,
            )
        self.objects[name] = obj

    # -- the usual names, for convenience ------------------------------------------------------
    @property
    def model(self) -> Any:
        return self.objects.get("model")

    @property
    def optimizer(self) -> Any:
        return self.objects.get("optimizer")

    @property
    def scheduler(self) -> Any:
        return self.objects.get("scheduler")

    @property
    def extras(self) -> dict[str, Any]:
        """A dict of plain values saved with the state (created on first use)."""
        if "extras" not in self.objects:
            self.objects["extras"] = {}
        return self.objects["extras"]

    def modules(self) -> dict[str, torch.nn.Module]:
        return {n: o for n, o in self.objects.items() if isinstance(o, torch.nn.Module)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {n: o for n, o in self.objects.items() if isinstance(o, torch.optim.Optimizer)}

    # -- capture and restore -------------------------------------------------------------------
    def capture(self) -> dict[str, Any]:
        """The state as nested references (serialise it before training goes on).

        Raises ``CheckpointError`` naming the key of a value a safe checkpoint cannot hold.
        """
        payload: dict[str, Any] = {"format": FORMAT, "step": self.step}
        for name, obj in self.objects.items():
            payload[name] = encode(obj.state_dict() if _stateful(obj) else obj, name)
        payload["rng"] = capture_rng()
        if self.best:
            payload["best"] = dict(self.best)
        payload["expckpt"] = {
            **encode(self.library, "expckpt"),
            "hparams": {name: optimizer_hparams(o) for name, o in self.optimizers().items()},
        }
        return payload

    def restore(self, payload: Mapping[str, Any], *, defer_rng: bool = False) -> list[str]:
        """Load a captured state back (modules were checked against it beforehand).

        Returns lines saying which optimizer settings differ now and what happens (see
        ``expckpt.state.hparams``). With ``defer_rng`` the RNG states wait for ``apply_rng()``.
        """
        raw_library = payload.get("expckpt")
        library: Mapping[str, Any] = raw_library if isinstance(raw_library, Mapping) else {}
        saved_hparams = dict(library.get("hparams") or {})
        if "optimizer" not in saved_hparams and isinstance(payload.get("optimizer_hparams"), Mapping):
            saved_hparams["optimizer"] = payload["optimizer_hparams"]  # checkpoints of expckpt 0.1
        fresh: dict[str, tuple[Any, Fresh]] = {}
        for name, opt in self.optimizers().items():
            sched = self._scheduler_of(opt)
            fresh[name] = (sched, snapshot(opt, sched))
        for name, obj in self.objects.items():
            if payload.get(name) is None:
                continue
            saved = decode(payload[name])
            if _stateful(obj):
                obj.load_state_dict(saved)
            elif isinstance(saved, dict):
                restore_in_place(obj, saved)
        lines: list[str] = []
        for name, (sched, before) in fresh.items():
            sched_name = next((n for n, o in self.objects.items() if o is sched), None)
            saved_sched = payload.get(sched_name) if sched_name else None
            lines += reconcile(name, self.objects[name], sched, before, saved_hparams.get(name), saved_sched)
        self.library = decode({k: v for k, v in library.items() if k != "hparams"})
        self.best = dict(payload["best"]) if payload.get("best") else None
        self.step = int(payload.get("step", -1))
        self._pending_rng = payload.get("rng") or {}
        if not defer_rng:
            self.apply_rng()
        return lines

    def apply_rng(self, *, keep: bool = False) -> None:
        """Put back the RNG states of the restored checkpoint, if any are waiting (``keep``:
        leave them waiting, to be put back again later)."""
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            if not keep:
                self._pending_rng = None

    def _scheduler_of(self, optimizer: Any) -> Any:
        for obj in self.objects.values():
            if getattr(obj, "optimizer", None) is optimizer and _stateful(obj):
                return obj
        return None
