"""expckpt: checkpoint experiments on DVC 3 and dvclive.

Each completed training step becomes a Git experiment ref ``<exp>@<step>`` that DVC's own
commands (``exp show``, ``exp apply``, ``metrics diff``, ``exp push`` ...) understand, with the
checkpoint file in the DVC cache. Resume is exact; loading never runs code.

The public API is the names in ``__all__``; the errors are in ``expckpt.errors``, the framework
adapters in ``expckpt.integrations``. Everything else is internal.
"""

import importlib
from typing import TYPE_CHECKING, Any

from expckpt import seeding as _seeding  # noqa: F401  (the generators' states before the script seeds them)
from expckpt.errors import ConfigError, ExpCkptError

# Exports that pull in torch or dvclive load on first use, so `expckpt show` and friends start
# in a fraction of a second (importing torch alone takes seconds).
_LAZY = {
    "load_checkpoint": "expckpt.checkpoint_file",
    "load_model": "expckpt.loading",
    "Checkpointer": "expckpt.checkpointer",
    "Decision": "expckpt.checkpointer",
    "Resumed": "expckpt.resume",
    "StopTraining": "expckpt.checkpointer",
    "CheckpointConfig": "expckpt.config",
    "CheckpointLive": "expckpt.live",
    "TrainingState": "expckpt.state",
    "DataPosition": "expckpt.datapos",
    "PAUSED_EXIT": "expckpt.pause",
    "TrainingPaused": "expckpt.pause",
}

_MOVED = {"CheckpointRef": "expckpt.refs"}
"""Names the top level no longer exports, and where they live (every error: ``expckpt.errors``)."""

if TYPE_CHECKING:
    from expckpt.checkpoint_file import load_checkpoint
    from expckpt.checkpointer import Checkpointer, Decision, StopTraining
    from expckpt.config import CheckpointConfig
    from expckpt.live import CheckpointLive
    from expckpt.loading import load_model
    from expckpt.resume import Resumed
    from expckpt.state import TrainingState
    from expckpt.datapos import DataPosition
    from expckpt.pause import PAUSED_EXIT, TrainingPaused


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
