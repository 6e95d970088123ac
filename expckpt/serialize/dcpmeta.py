"""Whether a ``torch.distributed.checkpoint`` directory's ``.metadata`` is only an index, before DCP reads it.

DCP's ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with plain ``pickle``: a crafted
file (a teammate's checkpoint pulled from a remote, a downloaded directory) would run code
before any ``weights_only`` load. What DCP writes there is an index: its own metadata
dataclasses, ``torch.Size``, dtypes and layouts, paths. ``unsafe_global`` unpickles the file with
exactly those classes allowed (anything else is refused before it is called or built) and says
which other one it named; ``checkpoint.init_from`` checks a directory source with it first, and
every other read of a DCP directory (resume, the doctor) goes through ``read_index``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata

from expckpt.errors import UnsafeCheckpointError
from expckpt.text import terminal_safe

__all__ = ["read_index", "unsafe_global"]

_MODULES = {"torch.distributed.checkpoint.metadata"}
"""Every class of these modules: DCP's metadata dataclasses."""
_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _Refused(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _IndexOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = module in _MODULES or (module, name) in _NAMES
        if module == "torch" and not allowed:  # dtypes, layouts, memory formats: values, not code
            allowed = isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))
        if not allowed:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def unsafe_global(metadata: Path) -> str | None:
    """None when ``metadata`` (a DCP ``.metadata`` file) holds only DCP's index; else what it
    names that is not (``module.name``), or why it is not a pickle at all."""
    try:
        _IndexOnly(io.BytesIO(Path(metadata).read_bytes())).load()
    except _Refused as refused:
        return refused.name
    except Exception as exc:  # noqa: BLE001 - a damaged file: whatever pickle raises, one line
        return f"no readable index ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def read_index(directory: Path) -> Metadata:
    """DCP's ``.metadata`` of ``directory``, read by DCP once ``unsafe_global`` found only its index;
    ``UnsafeCheckpointError`` (one line) otherwise, before DCP unpickles anything."""
    index = Path(directory) / ".metadata"
    unsafe = unsafe_global(index)
    if unsafe is not None:
        raise UnsafeCheckpointError(
            f"{directory}: its DCP .metadata holds {terminal_safe(unsafe)}, not only DCP's index; unpickling it"
            " could run code, so it is not loaded: use a checkpoint you trust (`expckpt verify`)",
            path=index,
        )
    return FileSystemReader(directory).read_metadata()
