"""Removed: torchrun / DDP needs no checkpointer of its own any more.

``Checkpointer.from_env(...)`` called on every rank finds the process group itself; rank 0
decides and publishes, every rank's RNG states are saved (see README: torchrun).
"""


def __getattr__(name: str) -> object:
    raise ImportError(
        f"expckpt.integrations.distributed.{name} was removed: call expckpt.Checkpointer.from_env(...) on every"
        " rank (it finds the torch.distributed process group itself) and use expckpt.integrations.loop.StepLog"
    )
