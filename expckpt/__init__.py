"""expckpt: checkpoint experiments on DVC 3 and dvclive.

Each completed training step becomes a Git experiment ref ``<exp>@<step>`` that DVC's own
commands (``exp show``, ``exp apply``, ``metrics diff``, ``exp push`` ...) understand, with the
checkpoint file in the DVC cache. Resume is exact; loading never runs code.

The public API is the names in ``__all__``; the errors are in ``expckpt.errors``, the framework
adapters in ``expckpt.integrations``. Everything else is internal.
"""

import importlib
from typing import TYPE_CHECKING, Any

from expckpt.state import seeding as _seeding  # noqa: F401  (the generators' states before the script seeds them)
from expckpt.errors import ConfigError, ExpCkptError

# Exports that pull in torch or dvclive load on first use, so `expckpt show` and friends start
# in a fraction of a second (importing torch alone takes seconds).
_LAZY = {
    "load_checkpoint": "expckpt.serialize.checkpoint_file",
    "load_model": "expckpt.serialize.loading",
    "Checkpointer": "expckpt.train.checkpointer",
    "Decision": "expckpt.train.checkpointer",
    "Resumed": "expckpt.train.resume",
    "StopTraining": "expckpt.train.checkpointer",
    "CheckpointConfig": "expckpt.policy.config",
    "CheckpointLive": "expckpt.train.live",
    "TrainingState": "expckpt.state.state",
    "DataPosition": "expckpt.state.datapos",
    "PAUSED_EXIT": "expckpt.train.pause",
    "TrainingPaused": "expckpt.train.pause",
}

_MOVED = {"CheckpointRef": "expckpt.store.refs"}
"""Names the top level no longer exports, and where they live (every error: ``expckpt.errors``)."""

if TYPE_CHECKING:
    from expckpt.serialize.checkpoint_file import load_checkpoint
    from expckpt.train.checkpointer import Checkpointer, Decision, StopTraining
    from expckpt.policy.config import CheckpointConfig
    from expckpt.train.live import CheckpointLive
    from expckpt.serialize.loading import load_model
    from expckpt.train.resume import Resumed
    from expckpt.state.state import TrainingState
    from expckpt.state.datapos import DataPosition
    from expckpt.train.pause import PAUSED_EXIT, TrainingPaused


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    errors = importlib.import_module("expckpt.errors")
    home = _MOVED.get(name) or ("expckpt.errors" if name in errors.__all__ else None)
    if home:
        raise AttributeError(f"expckpt.{name} is not exported from the top level any more: from {home} import {name}")
    raise AttributeError(f"module 'expckpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "PAUSED_EXIT",
    "CheckpointConfig",
    "CheckpointLive",
    "Checkpointer",
    "ConfigError",
    "DataPosition",
    "Decision",
    "ExpCkptError",
    "Resumed",
    "StopTraining",
    "TrainingPaused",
    "TrainingState",
    "load_checkpoint",
    "load_model",
]
__version__ = "0.1.0"
