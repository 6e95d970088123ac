"""A training state as a directory of files, so what did not change is the same DVC object.

    ckpt/expckpt.pt            everything that changes as training goes: trained parameters,
                               optimizer, scheduler, other objects, step, RNG states, expckpt's
                               own state, and the layout of the files below
    ckpt/model/backbone.pt     one file per frozen part of each module
    ckpt/model/l0/_frozen.pt   (a module mixing both: its frozen tensors; its children apart)

A module is split where frozen and trained parameters meet: a part whose parameters are all
frozen is one file named after it; a mixed one is split into its children, and its own frozen
tensors go to ``<module>/_frozen.pt`` (a LoRA layer: the frozen base weight apart from the
adapter). Everything trained shares one file, so a step writes, caches and fsyncs one file and
the manifest, like a single-file checkpoint, however scattered the trained parameters are. ``torch.save`` of the same keys and equal tensors writes the same bytes, so an
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

from expckpt.serialize.atomic import TEMP_MARK, WrittenFile, _storage_error
from expckpt.serialize.checkpoint_file import load_checkpoint
from expckpt.serialize.dirout import FileStat, WrittenDir
from expckpt.errors import CorruptCheckpointError

__all__ = ["META_FILE", "join_payload", "load_dir_checkpoint", "split_payload", "write_dir_temp"]

META_FILE = "expckpt.pt"
_META_KEYS = ("format", "step", "rng", "best", "expckpt")
_LAYOUT = "expckpt/layout"
"""Not an identifier, so no user object can be named so."""


def _trained(module: torch.nn.Module) -> bool | None:
    """True if every parameter under ``module`` is trained, False if all are frozen (or it has
    none), None if it mixes both."""
    flags = {p.requires_grad for p in module.parameters()}
    return None if len(flags) > 1 else flags == {True}


def _frozen_files(
    module: torch.nn.Module, keys: tuple[str, ...], file: tuple[str, ...]
) -> dict[str, tuple[str, ...] | None]:
    """state_dict key -> frozen file (path parts, no suffix), or None for a trained tensor."""
    dotted = "".join(f"{p}." for p in keys)
    kind = _trained(module)
    if kind is not None:
        return {f"{dotted}{k}": None if kind else file for k in module.state_dict()}
    found: dict[str, tuple[str, ...] | None] = {}
    saved = {k for k in module.state_dict(keep_vars=True) if "." not in k}  # its own; not the children's
    for name, param in module.named_parameters(recurse=False, remove_duplicate=False):
        found[f"{dotted}{name}"] = None if param.requires_grad else (*file, "_frozen")
    for name, _ in module.named_buffers(recurse=False, remove_duplicate=False):
        if name in saved:  # a non-persistent buffer is not in the state_dict
            found[f"{dotted}{name}"] = (*file, "_frozen")
    for name, child in module.named_modules(remove_duplicate=False):  # a child under two names: both
        if not name or "." in name:
            continue
        found.update(_frozen_files(child, (*keys, name), (*file, name)))
    return found


def split_payload(payload: Mapping[str, Any], modules: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    """One captured state (``TrainingState.capture()``) as ``relpath -> file payload``: what
    changes as training goes goes to ``expckpt.pt``, each frozen part to a file of its own."""
    hot: dict[str, Any] = {k: payload[k] for k in _META_KEYS if k in payload}
    files: dict[str, Any] = {}
    layout: dict[str, list[str]] = {}
    metadata: dict[str, Any] = {}
    for name, value in payload.items():
        if name in _META_KEYS:
            continue
        module = modules.get(name)
        if module is None or not isinstance(value, Mapping) or _trained(module) is True:
            hot[name] = value
            continue
        where = _frozen_files(module, (), (name,))
        trained: dict[str, Any] = {}
        parts: dict[str, dict[str, Any]] = {}
        for key, tensor in value.items():
            frozen = where.get(key)
            if frozen is None:
                trained[key] = tensor
            else:
                parts.setdefault("/".join(frozen) + ".pt", {})[key] = tensor
        files.update(parts)
        hot[name] = trained
        layout[name] = sorted(parts)
        if hasattr(value, "_metadata"):
            metadata[name] = dict(value._metadata)
    hot[_LAYOUT] = {"files": layout, "metadata": metadata}
    return {META_FILE: hot, **files}


def join_payload(hot: Mapping[str, Any], read: Any, where: Path) -> dict[str, Any]:
    """Rebuild the captured state from ``expckpt.pt`` and ``read(relpath) -> frozen part``."""
    layout = hot.get(_LAYOUT)
    if not isinstance(layout, Mapping) or not isinstance(layout.get("files"), Mapping):
        raise CorruptCheckpointError(f"{where / META_FILE} has no layout; it was not written by expckpt", path=where)
    payload = {k: v for k, v in hot.items() if k != _LAYOUT}
    for name, rels in layout["files"].items():
        trained = payload.get(name)
        if not isinstance(rels, list) or not isinstance(trained, Mapping):
            raise CorruptCheckpointError(f"{where / META_FILE} has a malformed layout entry {name!r}", path=where)
        merged: OrderedDict[str, Any] = OrderedDict(trained)
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


def _serialise(payload: Any) -> memoryview:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getbuffer()


def _unchanged(dest: Path, view: memoryview, previous: FileStat | None) -> bool:
    """Whether ``dest`` is still the file expckpt published (same stat) and holds ``view``'s
    bytes: then its known MD5 is this file's too. Reading a file back from the page cache and
    comparing costs a fraction of hashing it (a frozen backbone is compared, not rehashed)."""
    if previous is None or previous[1] != view.nbytes:
        return False
    try:
        st = os.stat(dest)
        if (st.st_size, st.st_mtime_ns, st.st_ino) != tuple(previous[1:]):
            return False
        with open(dest, "rb") as handle:
            data = bytearray(view.nbytes)
            return handle.readinto(data) == view.nbytes and data == view  # memcmp, ~1 ms for 16 MB
    except OSError:
        return False


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
            view = _serialise(payload)
            target = dest / rel
            prev = previous.get(rel)
            if prev is not None and _unchanged(target, view, tuple(prev)):  # type: ignore[arg-type]
                entries[rel] = (str(prev[0]), view.nbytes)
                continue
            md5 = hashlib.md5(view, usedforsecurity=False).hexdigest()
            entries[rel] = (md5, view.nbytes)
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
