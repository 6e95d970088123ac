"""The Trainer's best model, from expckpt's own kept checkpoint (``load_best_model_at_end``).

HF keeps its best model as a folder ``<output_dir>/checkpoint-<best_global_step>``; after
``dvc exp apply`` + ``dvc exp run`` that folder belongs to another experiment or was rotated
away, and HF ignores the best ("does not exist anymore"). The checkpoint HF calls best is one
expckpt kept (``keep_best`` by the derived ``monitor``); this module finds it (its step and its
``monitor`` value are in the resumed ``trainer_state.json``) and reads it back from the DVC cache:
its weights, to put back the folder HF loads at the end, and its bytes, so that ``model.pt``
holds the best model when training ends.

Everything here reads; the only write is ``put_file``'s atomic replace of the workspace file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from expckpt.serialize.atomic import atomic_write_bytes
from expckpt.store.catalog import Catalog
from expckpt.serialize.checkpoint_file import load_checkpoint
from expckpt.store.records import CheckpointRecord

__all__ = ["find_kept", "kept_weights", "put_file"]


def find_kept(committer: Any, step: int, monitor: str | None, value: float | None, exp: str) -> CheckpointRecord | None:
    """The kept checkpoint at ``step`` whose ``monitor`` is ``value`` (this experiment's first,
    then any of the same baseline); None when retention removed it or nothing matches."""
    if committer is None or monitor is None or value is None:
        return None
    records = Catalog.load(committer.store, [committer.run.baseline]).records
    hits = [r for r in records if r.step == step and r.metrics.get(monitor) == value]
    hits.sort(key=lambda r: (r.exp != exp, -r.time))
    return hits[0] if hits else None


def _object(committer: Any, record: CheckpointRecord, rel_path: str) -> Path | None:
    out = record.outs.get(rel_path)
    if out is None or out.nfiles is not None:  # a directory output: not a single file to read back
        return None
    path = committer.cache.object_path(out.md5)
    return path if path.is_file() else None


def kept_weights(committer: Any, record: CheckpointRecord, rel_path: str) -> dict[str, torch.Tensor] | None:
    """The model weights of ``record``'s checkpoint file (loaded with ``weights_only=True``)."""
    path = _object(committer, record, rel_path)
    if path is None:
        return None
    weights = load_checkpoint(path).get("model")
    return weights if isinstance(weights, dict) else None


def put_file(committer: Any, record: CheckpointRecord, rel_path: str, dest: Path) -> bool:
    """Make ``dest`` byte-identical to ``record``'s checkpoint file (atomic); False if it cannot."""
    path = _object(committer, record, rel_path)
    if path is None:
        return False
    atomic_write_bytes(dest, path.read_bytes(), durable=False)
    return True
