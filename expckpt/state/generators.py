"""A generator of your own, saved with the checkpoint: ``TrainingState(..., aug=GeneratorState(aug))``.

expckpt saves the global RNGs (Python, NumPy, torch) by itself; a generator a script makes for
itself (``np.random.default_rng(seed)`` for augmentation, a ``torch.Generator`` given to a
``DataLoader``, a ``random.Random``) is not global, and a resume that leaves it out restarts it
from its seed. ``GeneratorState`` gives such a generator ``state_dict()``/``load_state_dict()``
in a form a safe checkpoint holds (``torch.load(weights_only=True)``): a tensor for torch, JSON
text for NumPy and Python (their states hold integers wider than 64 bits).
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch

from expckpt.errors import CheckpointError, ConfigError

__all__ = ["GeneratorState"]


def _kind(generator: Any) -> str | None:
    if isinstance(generator, torch.Generator):
        return "torch"
    if isinstance(generator, random.Random):
        return "python"
    try:
        import numpy as np
    except ImportError:
        return None
    return "numpy" if isinstance(generator, np.random.Generator) else None


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # a NumPy array in a bit generator's state (MT19937's key)
        return value.tolist()
    raise TypeError(f"cannot save {type(value).__name__}")


class GeneratorState:
    """``state_dict()``/``load_state_dict()`` for a NumPy ``Generator``, a ``torch.Generator`` or a
    ``random.Random``."""

    def __init__(self, generator: Any) -> None:
        kind = _kind(generator)
        if kind is None:
            raise ConfigError(
                f"GeneratorState needs a numpy.random.Generator, torch.Generator or random.Random,"
                f" got a {type(generator).__name__}",
                value=type(generator).__name__,
            )
        self.generator = generator
        self.kind = kind

    def state_dict(self) -> dict[str, Any]:
        g = self.generator
        if self.kind == "torch":
            return {"kind": "torch", "state": g.get_state()}
        if self.kind == "python":
            return {"kind": "python", "state": json.dumps(g.getstate())}
        return {"kind": "numpy", "state": json.dumps(g.bit_generator.state, default=_plain)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("kind") != self.kind:
            found = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"the checkpoint holds a {found!r} generator state where this run has a"
                f" {self.kind!r} generator; register the same kind of generator under this name"
            )
        g = self.generator
        if self.kind == "torch":
            g.set_state(state["state"])
        elif self.kind == "python":
            version, internal, gauss = json.loads(state["state"])
            g.setstate((version, tuple(internal), gauss))
        else:
            g.bit_generator.state = json.loads(state["state"])
