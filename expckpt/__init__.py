"""expckpt: checkpoint experiments on DVC 3 and dvclive.

Each completed training step becomes a Git experiment ref ``<exp>@<step>`` that DVC's own
commands (``exp show``, ``exp apply``, ``metrics diff``, ``exp push`` ...) understand, with the
checkpoint file in the DVC cache. Resume is exact; loading never runs code.
"""

import importlib
from typing import TYPE_CHECKING, Any

from expckpt.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    DataError,
    ExpCkptError,
    GitLockedError,
    InvalidNameError,
    MissingCheckpointError,
    ProjectError,
    RefConflictError,
    RefError,
    StorageError,
    UnknownCheckpointError,
    UnsafeCheckpointError,
)

# Exports that pull in torch or dvclive load on first use, so `expckpt show` and friends start
# in a fraction of a second (importing torch alone takes seconds).
_LAZY = {
    "load_checkpoint": "expckpt.checkpoint_file",
    "load_model": "expckpt.checkpoint_file",
    "Checkpointer": "expckpt.checkpointer",
    "Decision": "expckpt.checkpointer",
    "Resumed": "expckpt.resume",
    "StopTraining": "expckpt.checkpointer",
    "CheckpointConfig": "expckpt.config",
    "CheckpointLive": "expckpt.live",
    "CheckpointRef": "expckpt.refs",
    "TrainingState": "expckpt.state",
    "DataPosition": "expckpt.datapos",
    "PAUSED_EXIT": "expckpt.pause",
    "TrainingPaused": "expckpt.pause",
}

if TYPE_CHECKING:
    from expckpt.checkpoint_file import load_checkpoint, load_model
    from expckpt.checkpointer import Checkpointer, Decision, StopTraining
    from expckpt.resume import Resumed
    from expckpt.config import CheckpointConfig
    from expckpt.live import CheckpointLive
    from expckpt.refs import CheckpointRef
    from expckpt.state import TrainingState
    from expckpt.datapos import DataPosition
    from expckpt.pause import PAUSED_EXIT, TrainingPaused


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'expckpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ArchitectureMismatchError",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointLive",
    "CheckpointRef",
    "Checkpointer",
    "ConfigError",
    "CorruptCheckpointError",
    "DataError",
    "DataPosition",
    "Decision",
    "ExpCkptError",
    "GitLockedError",
    "InvalidNameError",
    "MissingCheckpointError",
    "PAUSED_EXIT",
    "ProjectError",
    "RefConflictError",
    "RefError",
    "Resumed",
    "StopTraining",
    "StorageError",
    "TrainingPaused",
    "TrainingState",
    "UnknownCheckpointError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "load_model",
]
__version__ = "0.1.0"
