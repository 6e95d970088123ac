"""The one error hierarchy of expckpt.

Every error a user can cause or meet is an ``ExpCkptError``; its message says what is
wrong, with the offending value, and what to do next. The CLI prints it as one line on
stderr and exits non-zero (tracebacks only with ``-v``).

    ExpCkptError
    ├── ConfigError              a bad value in params.yaml or the Python API
    ├── ProjectError             not a Git repo, DVC not initialised, no checkpoint output
    ├── DataError                a download or data file is missing, corrupt or unknown
    ├── CheckpointError          a checkpoint file cannot be used
    │   ├── CorruptCheckpointError     truncated, unreadable or hash mismatch
    │   ├── UnsafeCheckpointError      would run code when loaded, or write outside its dvclive dir
    │   ├── ArchitectureMismatchError  saved from a different model
    │   └── MissingCheckpointError     the workspace's checkpoint is gone (file and cache object)
    ├── RefError                 checkpoint names and Git refs
    │   ├── InvalidNameError         an experiment name that cannot be a safe ref
    │   ├── UnknownCheckpointError   no checkpoint by that name (suggests close ones)
    │   ├── RefConflictError         a ref moved under us (compare-and-swap failed)
    │   └── GitLockedError           another process holds a Git ``.lock`` for too long
    └── StorageError             writing to the DVC cache or the workspace failed (disk full)
"""

from __future__ import annotations

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointError",
    "ConfigError",
    "CorruptCheckpointError",
    "DataError",
    "ExpCkptError",
    "GitLockedError",
    "InvalidNameError",
    "MissingCheckpointError",
    "ProjectError",
    "RefConflictError",
    "RefError",
    "StorageError",
    "UnknownCheckpointError",
    "UnsafeCheckpointError",
]


class ExpCkptError(Exception):
    """Base of every error expckpt raises on purpose."""


class ConfigError(ExpCkptError):
    """A configuration value is missing or invalid.

    ``key`` is the dotted params.yaml key (``checkpoint.keep_last``), ``value`` what was given.
    """

    def __init__(self, message: str, *, key: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


class ProjectError(ExpCkptError):
    """The directory is not a usable Git + DVC project for checkpoints."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class DataError(ExpCkptError):
    """Data could not be fetched or verified."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class CheckpointError(ExpCkptError):
    """A checkpoint file cannot be used."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class CorruptCheckpointError(CheckpointError):
    """The checkpoint is truncated, unreadable, or does not match its recorded hash."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint holds objects that would run code when unpickled, or its commit's dvclive
    tree would write outside the workspace's dvclive directory; it was refused."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint was saved from a model with other parameter names or shapes."""


class MissingCheckpointError(CheckpointError):
    """The workspace's note or dvc.lock names a checkpoint whose file and cache object are both
    gone: training stops instead of silently starting over. ``checkpoint`` is its name (or the
    file and md5 when no ref names it)."""

    def __init__(self, message: str, *, path: object = None, checkpoint: str | None = None) -> None:
        super().__init__(message, path=path)
        self.checkpoint = checkpoint


class RefError(ExpCkptError):
    """A checkpoint name or Git ref problem."""

    def __init__(self, message: str, *, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


class InvalidNameError(RefError):
    """An experiment name that would make an invalid or hostile Git ref."""


class UnknownCheckpointError(RefError):
    """No checkpoint matches the given name."""


class RefConflictError(RefError):
    """A ref was changed by someone else between read and update.

    ``expected`` is what the writer assumed the ref held (``None``: absent), ``actual`` what
    it holds now (``None``: absent), when known.
    """

    def __init__(
        self, message: str, *, ref: str | None = None, expected: str | None = None, actual: str | None = None
    ) -> None:
        super().__init__(message, ref=ref)
        self.expected = expected
        self.actual = actual


class GitLockedError(RefError):
    """A Git ``.lock`` file held by another process did not go away in time; ``ref`` is its path."""


class StorageError(ExpCkptError):
    """Writing a checkpoint, cache object or Git object failed; nothing was published."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path
