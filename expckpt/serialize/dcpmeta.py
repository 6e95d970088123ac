"""Whether a ``torch.distributed.checkpoint`` directory's ``.metadata`` is only an index, before DCP reads it.

DCP's ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with plain ``pickle``: a crafted
file (a teammate's checkpoint pulled from a remote, a downloaded directory) would run code
before any ``weights_only`` load. What DCP writes there is an index: its own metadata
dataclasses, ``torch.Size``, dtypes and layouts, paths. ``unsafe_global`` unpickles the file with
exactly those classes allowed (anything else is refused before it is called or built) and says
which other one it named. ``check_index`` refuses a file that is not only the index: rank 0 checks
a ``checkpoint.init_from`` directory source with it, and resuming and the doctor read a DCP
directory through ``read_index``.
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

__all__ = ["check_index", "read_index", "unsafe_global"]

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


def check_index(metadata: Path | None, what: str, fix: str) -> None:
    """Raise ``UnsafeCheckpointError`` (one line: ``what``, the name found, ``fix``) unless
    ``metadata`` is a DCP ``.metadata`` holding only DCP's index (None: there is none)."""
    unsafe = "no .metadata" if metadata is None else unsafe_global(metadata)
    if unsafe is not None:
        raise UnsafeCheckpointError(
            f"{what}: its DCP .metadata holds {terminal_safe(unsafe)}, not only DCP's index; unpickling it"
            f" could run code, so it is not loaded: {fix}",
            path=metadata,
        )


def read_index(directory: Path) -> Metadata:
    """DCP's ``.metadata`` of ``directory``, read by DCP once ``check_index`` found only its index."""
    check_index(Path(directory) / ".metadata", str(directory), "use a checkpoint you trust (`expckpt verify`)")
    return FileSystemReader(directory).read_metadata()
