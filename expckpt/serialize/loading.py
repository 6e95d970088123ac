"""Loading a checkpoint output, whichever kind it is: one ``torch.save`` file or a directory of them.

Both loads use ``torch.load(weights_only=True)``: a checkpoint never runs code when loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from expckpt.serialize.checkpoint_file import check_architecture, load_checkpoint
from expckpt.serialize.dirstate import load_dir_checkpoint

__all__ = ["load_model", "load_state"]


def load_state(path: Path) -> dict[str, Any]:
    """The payload of a checkpoint file or directory."""
    path = Path(path)
    return load_dir_checkpoint(path) if path.is_dir() else load_checkpoint(path)


def load_model(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load only the model weights of a checkpoint file or directory (for evaluation and inference)."""
    payload = load_state(Path(path))
    weights = payload.get("model", payload)
    check_architecture(model, weights, Path(path))
    model.load_state_dict(weights)
    return payload
