"""A training state as a directory of files, so what did not change is the same DVC object.

    ckpt/expckpt.pt            step, RNG states, expckpt's own state, and the layout below
    ckpt/model/backbone.pt     one file per part of each module whose parameters are all
    ckpt/model/head.pt         frozen or all trained (a frozen backbone: one unchanged file)
    ckpt/optimizer.pt          one file per other object

A module is split where frozen and trained parameters meet: a submodule whose parameters all
share ``requires_grad`` is one file; a mixed one is split into its children, and its own
tensors into ``_frozen.pt`` and ``_trained.pt`` (a LoRA layer: the frozen base weight apart from
the adapter). ``torch.save`` of the same keys and equal tensors writes the same bytes, so an
unchanged part hashes to the object already in the cache and is neither written nor cached again.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from expckpt.atomic import TEMP_MARK, WrittenFile, _storage_error
from expckpt.checkpoint_file import load_checkpoint
from expckpt.dirout import FileStat, WrittenDir
from expckpt.errors import CorruptCheckpointError

__all__ = ["META_FILE", "join_payload", "load_dir_checkpoint", "split_payload", "write_dir_temp"]

META_FILE = "expckpt.pt"
_META_KEYS = ("format", "step", "rng", "best", "expckpt")


def _uniform(module: torch.nn.Module) -> bool:
    flags = {p.requires_grad for p in module.parameters()}
    return len(flags) <= 1


def _groups(module: torch.nn.Module, keys: tuple[str, ...], file: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """state_dict key -> file (path parts, no suffix) for ``module`` at key prefix ``keys``."""
    dotted = "".join(f"{p}." for p in keys)
    if _uniform(module):
        return {f"{dotted}{k}": file for k in module.state_dict()}
    found: dict[str, tuple[str, ...]] = {}
    for name, param in module._parameters.items():
        if param is not None:
            found[f"{dotted}{name}"] = (*file, "_trained" if param.requires_grad else "_frozen")
    for name, buf in module._buffers.items():
        if buf is not None and name not in module._non_persistent_buffers_set:
            found[f"{dotted}{name}"] = (*file, "_frozen")
    for name, child in module._modules.items():
        if child is not None:
            found.update(_groups(child, (*keys, name), (*file, name)))
    return found


def split_payload(payload: Mapping[str, Any], modules: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    """One captured state (``TrainingState.capture()``) as ``relpath -> file payload``."""
    files: dict[str, Any] = {}
    layout: dict[str, list[str]] = {}
    metadata: dict[str, Any] = {}
    for name, value in payload.items():
        if name in _META_KEYS:
            continue
        module = modules.get(name)
        if module is None or not isinstance(value, Mapping):
            rel = f"{name}.pt"
            files[rel] = value
            layout[name] = [rel]
            continue
        where = _groups(module, (), (name,))
        parts: dict[str, dict[str, Any]] = {}
        for key, tensor in value.items():
            rel = "/".join(where.get(key, (name, "_other"))) + ".pt"
            parts.setdefault(rel, {})[key] = tensor
        files.update(parts)
        layout[name] = sorted(parts)
        if hasattr(value, "_metadata"):
            metadata[name] = dict(value._metadata)
    meta = {k: payload[k] for k in _META_KEYS if k in payload}
    meta["layout"] = {"modules": sorted(set(modules) & set(layout)), "files": layout, "metadata": metadata}
    files[META_FILE] = meta
    return files


def join_payload(meta: Mapping[str, Any], read: Any, where: Path) -> dict[str, Any]:
    """Rebuild the captured state from the meta file and ``read(relpath) -> file payload``."""
    layout = meta.get("layout")
    if not isinstance(layout, Mapping) or not isinstance(layout.get("files"), Mapping):
        raise CorruptCheckpointError(f"{where / META_FILE} has no layout; it was not written by expckpt", path=where)
    payload = {k: meta[k] for k in _META_KEYS if k in meta}
    modules = set(layout.get("modules") or [])
    for name, rels in layout["files"].items():
        if not isinstance(name, str) or not isinstance(rels, list) or not rels:
            raise CorruptCheckpointError(f"{where / META_FILE} has a malformed layout entry {name!r}", path=where)
        if name not in modules:
            payload[name] = read(rels[0])
            continue
        merged: OrderedDict[str, Any] = OrderedDict()
        for rel in rels:
            part = read(rel)
            if not isinstance(part, Mapping):
                raise CorruptCheckpointError(f"{where / rel} does not hold module weights", path=where / rel)
            merged.update(part)
        merged._metadata = dict((layout.get("metadata") or {}).get(name) or {})  # type: ignore[attr-defined]
        payload[name] = merged
    return payload


def _inside(root: Path, rel: Any) -> Path:
    """``root / rel`` for a relpath read from a checkpoint (untrusted): no escaping ``root``."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CorruptCheckpointError(f"{root / META_FILE} names an unsafe file {rel!r}", path=root)
    return root.joinpath(*parts)


def load_dir_checkpoint(path: Path) -> dict[str, Any]:
    """Load a directory checkpoint (``torch.load(weights_only=True)`` for every file)."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CorruptCheckpointError(
            f"{path} is not a complete checkpoint directory (no {META_FILE}); restore a good one with"
            " `dvc exp apply <exp>@<step>` (see `expckpt list`) or start over with `expckpt reset`",
            path=path,
        )
    meta = load_checkpoint(meta_path)
    return join_payload(meta, lambda rel: load_checkpoint(_inside(path, rel)), path)


def _serialise(payload: Any) -> tuple[memoryview, str]:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    view = buffer.getbuffer()
    return view, hashlib.md5(view, usedforsecurity=False).hexdigest()


def _unchanged(dest: Path, md5: str, previous: FileStat | None) -> bool:
    if previous is None or previous[0] != md5:
        return False
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino) == tuple(previous[1:])


def write_dir_temp(
    files: Mapping[str, Any], dest: Path, previous: Mapping[str, FileStat] | None = None, *, durable: bool = True
) -> WrittenDir:
    """Serialise each file and hash it; write a temp file only where the bytes differ from the
    file already in ``dest`` (``previous``: its per-file stats when expckpt last published it)."""
    dest = Path(dest)
    previous = previous or {}
    entries: dict[str, tuple[str, int]] = {}
    changed: dict[str, WrittenFile] = {}
    try:
        for rel, payload in files.items():
            view, md5 = _serialise(payload)
            entries[rel] = (md5, view.nbytes)
            target = dest / rel
            prev = previous.get(rel)
            if _unchanged(target, md5, tuple(prev) if prev is not None else None):  # type: ignore[arg-type]
                continue
            tmp = target.with_name(f"{TEMP_MARK}{target.name}.{os.getpid()}.{threading.get_ident()}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as handle:
                    handle.write(view)
                    handle.flush()
                    if durable:
                        os.fsync(handle.fileno())
            except OSError as exc:
                with_tmp = WrittenFile(tmp=tmp, dest=target, md5=md5, size=view.nbytes)
                with_tmp.discard()
                raise _storage_error(target, exc) from exc
            changed[rel] = WrittenFile(tmp=tmp, dest=target, md5=md5, size=view.nbytes)
    except BaseException:
        for written in changed.values():
            written.discard()
        raise
    return WrittenDir.from_files(dest, entries, changed)
