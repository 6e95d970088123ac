"""Checkpoint files: serialise, write atomically with their DVC hash, and load safely.

Loading always uses ``torch.load(weights_only=True, map_location="cpu")``: no code runs, and a
checkpoint saved on a GPU loads on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pickletools
import re
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from expckpt.serialize.atomic import TEMP_MARK, WrittenFile, _storage_error
from expckpt.serialize.staging import cpu_storages, to_cpu
from expckpt.serialize.streaming import HashingStream
from expckpt.errors import (
    ArchitectureMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)

__all__ = ["check_architecture", "load_checkpoint", "write_temp"]

# What torch's weights-only unpickler says when a file asks to import or call something.
_ASKS_FOR_CODE = re.compile(
    r"GLOBAL \S+|unrecognized function|Can only create new object|Can only build|must be \S+ to load"
)


def write_temp(payload: Mapping[str, Any], dest: Path, *, durable: bool = True) -> WrittenFile:
    """Serialise ``payload`` into a temp file next to ``dest``, hashing it as it is written.

    Tensors are written as CPU tensors whatever their device (``staging.to_cpu``), so a GPU
    run's file is the file an asynchronous save of the same state writes. ``torch.save``
    streams into a ``HashingStream``: each record is written and MD5-hashed (DVC's hash) in
    parallel as it comes, with no copy of the whole file in memory; the bytes are exactly
    those ``torch.save(to_cpu(payload), file_object)`` writes (for a CPU state whose equal
    strings are one object, as a fresh run's are: ``torch.save(payload, file_object)``'s).
    ``payload`` must not change until this returns.
    """
    dest = Path(dest)
    payload = to_cpu(payload)
    tmp = dest.with_name(f"{TEMP_MARK}{dest.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise _storage_error(dest, exc) from exc
    stream = HashingStream(fd, cpu_storages(payload), writeback=durable)
    try:
        try:
            torch.save(payload, stream)  # type: ignore[arg-type]  # a write-only file object: all torch.save needs
            md5, size = stream.finish(durable=durable)
        finally:
            stream.abort()
            os.close(fd)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        cause = exc if isinstance(exc, OSError) else _os_error_in(exc)
        if cause is not None:
            raise _storage_error(dest, cause) from exc
        raise
    return WrittenFile(tmp=tmp, dest=dest, md5=md5, size=size)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError a write raised inside torch.save, if torch re-raised it as something else."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without running code; corrupt or hostile files raise clear errors."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        if _ASKS_FOR_CODE.search(str(exc)) or _is_whole_pickle(path):
            raise UnsafeCheckpointError(
                f"{path} holds objects that would run code when loaded, so it was refused;"
                " only load checkpoints from sources you trust, or re-save it as plain tensors",
                path=path,
            ) from exc
        # A malformed pickle the safe unpickler stopped at (an unknown opcode) is damaged data.
        raise _corrupt(path, pickle.UnpicklingError("unreadable pickle data")) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(
            f"{path} is not a checkpoint (it holds a {type(payload).__name__}, not a dict)",
            path=path,
        )
    return payload


def _is_whole_pickle(path: Path) -> bool:
    """Whether the refused pickle is well formed (refused for what it holds, e.g. protocol 4+
    ``FRAME`` hiding an import, not for damage). ``pickletools`` only decodes; it runs nothing."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"))
        else:
            data = path.read_bytes()
        *_, (opcode, _, pos) = pickletools.genops(data)
        return opcode.name == "STOP" and pos == len(data) - 1
    except Exception:  # noqa: BLE001 - anything unreadable is simply not a whole pickle
        return False


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    # The first sentence of the first line: torch's zip errors go on with advice for its own
    # developers ("This is an internal miniz error. If you ..."), cut off mid-word otherwise.
    reason = str(exc).splitlines()[0].split(". ")[0].rstrip(".")[:120] if str(exc).strip() else type(exc).__name__
    return CorruptCheckpointError(
        f"{path} is truncated or corrupt ({reason}); restore a good one with"
        " `dvc exp apply <exp>@<step>` (see `expckpt list`) or start over with `expckpt reset`",
        path=path,
    )


def check_architecture(model: torch.nn.Module, weights: Mapping[str, Any] | None, path: Path) -> None:
    """Raise ``ArchitectureMismatchError`` unless ``weights`` fit ``model`` exactly."""
    if not isinstance(weights, Mapping):
        raise CorruptCheckpointError(f"{path} has no model weights", path=path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    resized = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if not (missing or unexpected or resized):
        return
    details = []
    if missing:
        details.append(f"missing {', '.join(missing[:3])}")
    if unexpected:
        details.append(f"unexpected {', '.join(unexpected[:3])}")
    if resized:
        k = resized[0]
        details.append(f"{k} is {list(found[k])} in the file but {list(expected[k])} in the model")
    raise ArchitectureMismatchError(
        f"{path} was saved from a different model architecture ({'; '.join(details)});"
        " train from scratch with `expckpt reset`, or restore the matching code",
        path=path,
    )
