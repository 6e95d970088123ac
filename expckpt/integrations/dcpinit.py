"""A fresh sharded trial from another checkpoint's weights (``checkpoint.init_from`` with ``DcpHandler``).

    state = {"model": ModelState(model), "optimizer": OptimizerState(model, optimizer)}

The weights are the state's ``model`` entry (and any ``nn.Module`` entry): a ``Stateful``, a
module, or a plain dict of (D)tensors. Only they are loaded; the other entries stay fresh unless
``checkpoint.init_restore`` names them (and ``rng``: each rank its own saved RNG states). Rank 0
resolved the source and hashed it against its record (``initsource.source_for``); then:

- a DCP directory checkpoint: rank 0 checks that its ``.metadata`` (which DCP unpickles) is only
  DCP's index (``serialize.dcpmeta``), links its verified files into a staging directory beside
  the output (``.expckpt-tmp-<name>.<pid>.init.dcp``, removed after, or by the next run's
  ``clean`` if killed) and every rank loads its own shard view with ``torch.distributed.checkpoint``
  from there (DCP reshards: another world size or sharding loads it too);
- a checkpoint file (``torch.save``, e.g. a ``FileHandler`` front end's): every rank reads the
  whole weights (``weights_only``) and keeps its shard of each (``distribute_tensor`` onto the
  parameter's own mesh and placements). A file gives only weights: ``init_restore`` needs a
  directory source.

Shapes are checked first on every rank alike (the source's global shapes: DCP's metadata, or the
file's tensors), with the same rules as a file checkpoint (``initfrom.fitting_keys``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor, distribute_tensor

from expckpt.errors import ConfigError
from expckpt.serialize.dcpmeta import check_index
from expckpt.serialize.dcpread import SafeLoadPlanner, rng_key, unpack
from expckpt.state.rng import restore_rng
from expckpt.serialize.checkpoint_file import load_checkpoint
from expckpt.train.coordination import Coordinator
from expckpt.train.initfrom import fitting_keys
from expckpt.train.initsource import InitSource

__all__ = ["WEIGHTS", "init_from_dcp"]

WEIGHTS = "model"
"""The state entry that holds the weights (besides any ``nn.Module`` entry)."""


def weight_entries(state: Mapping[str, Any]) -> list[str]:
    return [k for k, v in state.items() if k == WEIGHTS or isinstance(v, torch.nn.Module)]


def _tensors(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else value.state_dict()


def _refuse(source: InitSource, what: str, fix: str, key: str = "checkpoint.init_from") -> ConfigError:
    return ConfigError(f"checkpoint.init_from {source.describe()}: {what}; {fix}", key=key, value=source.spec)


def _stage(staging: Path, source: InitSource) -> Path:
    """Rank 0: the source's verified files under their names, where DCP reads them (once its
    ``.metadata``, which DCP unpickles, is known to be only DCP's index)."""
    assert source.files is not None
    check_index(
        source.files.get(".metadata"), f"checkpoint.init_from {source.describe()}", "start from a checkpoint you trust"
    )
    shutil.rmtree(staging, ignore_errors=True)
    for rel, src in source.files.items():
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)  # the cache's read-only object: DCP only reads it
        except OSError:
            shutil.copyfile(src, dest)
    return staging


def init_from_dcp(
    state: dict[str, Any],
    source: InitSource,
    *,
    staging: Path,
    coord: Coordinator,
    restore: tuple[str, ...],
    strict: bool,
    echo: Callable[[str], None],
) -> None:
    """Load ``source``'s weights (and what ``restore`` names) into the fresh sharded ``state``, on
    every rank; a directory source is read from ``staging`` (rank 0's path, named by its pid)."""
    names = weight_entries(state)
    if not names:
        raise _refuse(
            source,
            f"the state has no {WEIGHTS!r} entry to load weights into (it has: {', '.join(state) or 'nothing'})",
            f'give the weights their own entry: {{"{WEIGHTS}": ModelState(model), "optimizer": ...}}'
            " (see examples/dcp)",
        )
    for name in restore:
        if name != "rng" and name not in state:
            raise _refuse(
                source,
                f"init_restore names {name!r}, which this run's state does not have (state: {', '.join(state)})",
                "remove it or name one of those",
                key="checkpoint.init_restore",
            )
    if source.files is None:
        if restore:
            raise _refuse(
                source,
                f"a checkpoint file gives only its weights, but init_restore names {', '.join(restore)}",
                "remove init_restore, or start from a DCP directory checkpoint",
                key="checkpoint.init_restore",
            )
        _from_file(state, names, source, strict, echo)
        return
    staging = coord.on_main(lambda: _stage(staging, source))
    try:
        coord.everyone(lambda: _from_dir(state, names, source, staging, restore, strict, echo, coord.rank))
    finally:
        coord.on_main(lambda: shutil.rmtree(staging, ignore_errors=True))


def _shapes(tensors: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def _put_back(value: Any, tensors: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        value.load_state_dict(tensors)


def _from_dir(
    state: dict[str, Any],
    names: list[str],
    source: InitSource,
    staging: Path,
    restore: tuple[str, ...],
    strict: bool,
    echo: Callable[[str], None],
    rank: int,
) -> None:
    own_rng = rng_key(rank)
    saved = FileSystemReader(staging).read_metadata().state_dict_metadata
    wanted: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {}
    for name in names:
        own[name] = tensors = _tensors(state[name])
        prefix = f"{name}."
        found = {
            k[len(prefix) :]: tuple(m.size)
            for k, m in saved.items()
            if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)
        }
        if not found:
            tops = sorted({k.split(".", 1)[0] for k in saved if not k.startswith("expckpt/")})
            raise _refuse(
                source,
                f"it holds no weights for {name!r} (it has: {', '.join(tops[:8])})",
                "name the state's entries as the source's were saved",
            )
        keep = fitting_keys(name, _shapes(tensors), found, source, strict, echo)
        wanted[name] = {k: v for k, v in tensors.items() if k in keep}
    for name in restore:
        if name == "rng":
            if own_rng not in saved:
                raise _refuse(
                    source,
                    "init_restore names rng, but it holds no RNG states for this rank",
                    "remove rng from it",
                    key="checkpoint.init_restore",
                )
            wanted[own_rng] = torch.empty(saved[own_rng].size, dtype=torch.uint8)  # type: ignore[union-attr]
        elif not any(k.startswith(f"{name}.") or k == name for k in saved):
            raise _refuse(
                source,
                f"init_restore names {name!r}, which it does not hold",
                "remove it",
                key="checkpoint.init_restore",
            )
        else:
            wanted[name] = state[name]  # DCP calls a Stateful's state_dict/load_state_dict itself
    dcp.load(wanted, checkpoint_id=staging, planner=SafeLoadPlanner())  # in place, each rank its shards
    for name in names:
        _put_back(state[name], own[name])
    if own_rng in wanted:
        restore_rng(unpack(wanted[own_rng]))


def _from_file(
    state: dict[str, Any], names: list[str], source: InitSource, strict: bool, echo: Callable[[str], None]
) -> None:
    payload = load_checkpoint(source.path)
    for name in names:
        weights = payload.get(name)
        if weights is None and len(names) == 1 and all(isinstance(v, torch.Tensor) for v in payload.values()):
            weights = payload  # a plain torch.save(model.state_dict(), path)
        if not isinstance(weights, Mapping):
            raise _refuse(
                source,
                f"it holds no weights for {name!r} (it has: {', '.join(sorted(str(k) for k in payload)[:8])})",
                "name the state's entries as the source's were saved",
            )
        tensors = _tensors(state[name])
        keep = fitting_keys(name, _shapes(tensors), _shapes(weights), source, strict, echo)
        with torch.no_grad():
            for key in sorted(keep):  # the same order on every rank: distribute_tensor is collective
                target, full = tensors[key], weights[key]
                if isinstance(target, DTensor):
                    local = full.to(device=target.to_local().device, dtype=target.dtype)
                    target.copy_(distribute_tensor(local, target.device_mesh, target.placements))
                else:
                    target.copy_(full)
        _put_back(state[name], tensors)
