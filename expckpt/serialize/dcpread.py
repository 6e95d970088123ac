"""A ``torch.distributed.checkpoint`` directory as expckpt writes it, read whole in one process.

    payload = load_dcp_checkpoint(Path("ckpt"))   # {"model": {...}, "step": 3, "rng": {"rank0": ...}}

``DcpHandler`` (``expckpt.integrations.dcp``) saves the user's state with ``dcp.save`` and adds
its own keys beside it: the step, each rank's RNG states and rank 0's watch, as tensors. Reading
without the ranks (``expckpt doctor`` compares two runs' checkpoints) rebuilds every saved key at
its full size from the shards (DCP reshards) into the nested payload shape of a single-file
checkpoint: the user's keys as they were nested, ``step`` an int, ``rng`` one entry per rank,
the watch under ``expckpt``.

Non-tensor values (an optimizer's param groups, a generator's state) load with
``torch.load(weights_only=True)``. DCP's ``.metadata`` file is DCP's own index of the directory
(each key's size, dtype and where its chunks are in the ``*.distcp`` files, and the nesting of
the state it was flattened from): a pickle, which DCP unpickles itself whenever it loads; it is
read here, as in training, only once ``serialize.dcpmeta`` found nothing in it but that index.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem

from expckpt.errors import CorruptCheckpointError
from expckpt.serialize.dcpmeta import read_index

__all__ = [
    "DCP_METADATA",
    "STEP_KEY",
    "TRIAL_KEY",
    "WATCH_KEY",
    "SafeLoadPlanner",
    "is_dcp_dir",
    "load_dcp_checkpoint",
    "rng_key",
    "unpack",
]

DCP_METADATA = ".metadata"
STEP_KEY = "expckpt/step"
WATCH_KEY = "expckpt/watch"
TRIAL_KEY = "expckpt/initialized_from"
"""A fresh trial's lineage (``checkpoint.init_from``), saved by rank 0 with every checkpoint of it."""
_RNG_PREFIX = "expckpt/rng/"
_OURS = frozenset({"step", "rng", "expckpt", "format", "best"})
"""The payload's own top-level names (the comparer's): a user's key so named is renamed."""


def rng_key(rank: int) -> str:
    return f"{_RNG_PREFIX}{rank}"


def unpack(tensor: torch.Tensor) -> Any:
    """A value ``DcpHandler`` packed as a uint8 tensor (``torch.save`` bytes), loaded safely."""
    return torch.load(io.BytesIO(tensor.numpy().tobytes()), weights_only=True)


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, but non-tensor values are loaded with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def is_dcp_dir(path: Path) -> bool:
    """A directory holding DCP's ``.metadata`` (``DcpHandler``'s checkpoint output)."""
    return Path(path).is_dir() and (Path(path) / DCP_METADATA).is_file()


def _read_flat(path: Path) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """(DCP key -> value, DCP key -> the nesting it was flattened from)."""
    reader = FileSystemReader(path)
    metadata = read_index(path)  # DCP's own pickle, once it is known to hold only DCP's index
    flat: dict[str, Any] = {
        key: torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else None
        for key, md in metadata.state_dict_metadata.items()
    }
    planner = SafeLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        dcp.load(flat, storage_reader=reader, planner=planner, no_dist=True)
    nesting = metadata.planner_data if isinstance(metadata.planner_data, Mapping) else {}
    return flat, nesting


def _first_line(exc: BaseException) -> str:
    """What went wrong, in one line: DCP wraps each rank's error with its traceback."""
    if isinstance(exc, CheckpointException) and exc.failures:
        exc = next(iter(exc.failures.values()))[0]
    said = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {said[0]}" if said else type(exc).__name__


def load_dcp_checkpoint(path: Path) -> dict[str, Any]:
    """Every key of the DCP checkpoint directory ``path``, nested as saved (see the module docstring)."""
    path = Path(path)
    try:
        flat, nesting = _read_flat(path)
    except (CheckpointException, Exception) as exc:  # noqa: BLE001 - whatever DCP or pickle raise: one line
        raise CorruptCheckpointError(
            f"{path} is not a readable torch.distributed.checkpoint directory ({_first_line(exc)});"
            " restore a good one with `dvc exp apply <exp>@<step>` (see `expckpt list`)",
            path=path,
        ) from exc
    payload: dict[str, Any] = {}
    rng: dict[str, Any] = {}
    for key, value in flat.items():
        if key == STEP_KEY:
            payload["step"] = int(value)
        elif key.startswith(_RNG_PREFIX):
            rng[f"rank{key[len(_RNG_PREFIX) :]}"] = unpack(value)
        elif key in (WATCH_KEY, TRIAL_KEY):
            payload.setdefault("expckpt", {})[key.removeprefix("expckpt/")] = unpack(value)
        else:
            where = [str(part) for part in nesting.get(key) or (key,)]
            if where[0] in _OURS:  # a key of the user's named like one of the payload's own
                where[0] = f"state.{where[0]}"
            node = payload
            for part in where[:-1]:
                node = node.setdefault(part, {})
            node[where[-1]] = value
    if rng:
        payload["rng"] = dict(sorted(rng.items()))
    return payload
