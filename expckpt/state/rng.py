"""Random number generator states: captured with every checkpoint, put back on resume.

Python's ``random``, NumPy's global generator, torch's CPU generator and, when this process
uses CUDA, every CUDA device's generator. "Uses" means CUDA is already initialised here
(``torch.cuda.is_initialized()``): asking ``torch.cuda.is_available()`` and reading the CUDA
generators would create a CUDA context in a CPU-only run on a GPU machine (measured: 215 ms and
0.55 GB of GPU memory per process at its first checkpoint). A process that has not initialised
CUDA has drawn nothing from the CUDA generators, so there is nothing to save.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, cast

import torch

from expckpt.state.seeding import AT_IMPORT

__all__ = ["capture_rng", "restore_rng"]

AT_IMPORT.add_new()  # NumPy's generator, when torch imported NumPy after expckpt itself was imported


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when this process has initialised CUDA) CUDA generator states."""
    version, internal, gauss = random.getstate()
    rng: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = cast(tuple[str, Any, int, int, float], np.random.get_state(legacy=True))
        rng["numpy"] = [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    if torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Put back what ``capture_rng`` took (CUDA only when this machine has as many GPUs).

    Setting the CUDA states is lazy in torch: a process that never uses CUDA gets no context.
    """
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "numpy" in rng:
        import numpy as np

        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    cuda = rng.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
