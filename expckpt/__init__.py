"""expckpt: checkpoint experiments on DVC 3 and dvclive.

Each completed training step becomes a Git experiment ref ``<exp>@<step>`` that DVC's own
commands (``exp show``, ``exp apply``, ``metrics diff``, ``exp push`` ...) understand, with the
checkpoint file in the DVC cache. Resume is exact; loading never runs code.
"""

from expckpt.checkpoint_file import load_checkpoint, load_model
from expckpt.checkpointer import Checkpointer, Resumed, StopTraining
from expckpt.config import CheckpointConfig
from expckpt.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    DataError,
    ExpCkptError,
    InvalidNameError,
    ProjectError,
    RefConflictError,
    RefError,
    StorageError,
    UnknownCheckpointError,
    UnsafeCheckpointError,
)
from expckpt.live import CheckpointLive
from expckpt.refs import CheckpointRef
from expckpt.state import TrainingState

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
    "ExpCkptError",
    "InvalidNameError",
    "ProjectError",
    "RefConflictError",
    "RefError",
    "Resumed",
    "StopTraining",
    "StorageError",
    "TrainingState",
    "UnknownCheckpointError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "load_model",
]
__version__ = "0.1.0"
