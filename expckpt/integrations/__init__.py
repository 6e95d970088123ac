"""Framework integrations: thin adapters from a framework's training loop to ``Checkpointer``.

Each module imports its framework, so none is imported here (``import expckpt`` and the Git/DVC
core never load Lightning, transformers or torch.distributed)::

    from expckpt.integrations.lightning import ExpCkptCallback     # pip install 'expckpt[lightning]'
    from expckpt.integrations.hf import ExpCkptTrainerCallback     # pip install 'expckpt[hf]'
    from expckpt.integrations.dcp import DcpHandler                # sharded torch.distributed.checkpoint

torchrun / DDP needs no module of its own: ``expckpt.Checkpointer.from_env`` on every rank finds
the process group. All of them go through ``expckpt.integrations.loop.StepLog``, which owns the
dvclive ``Live`` and the core ``Checkpointer`` of one run, so a framework adapter only says *when*
a step is complete and *which* metrics it has; every decision is the core's.
"""

from importlib.util import find_spec

__all__ = ["available"]

_REQUIRES = {"lightning": "lightning", "hf": "transformers", "dcp": "torch"}


def available() -> dict[str, bool]:
    """Which integration modules can be imported here (their framework is installed), without importing any."""
    return {name: find_spec(package) is not None for name, package in _REQUIRES.items()}
