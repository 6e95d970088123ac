"""The Lightning internals expckpt relies on, each in one place, each pinned by a test.

Lightning has no public way to (1) build its checkpoint dict without writing a file, (2) hand
``fit`` a checkpoint dict instead of a path (``fit(ckpt_path=...)`` loads a file, and not with
``weights_only=True``), or (3) read a ``ModelCheckpoint``'s ``every_n_epochs``. Nothing else in
expckpt touches Lightning's private names. ``tests/test_lightning_internals.py`` pins what each
function relies on, so a Lightning release that changes it fails there with one clear message
instead of corrupting a checkpoint. Tested with Lightning 2.6.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["dump_checkpoint", "every_n_epochs", "hand_over"]


def dump_checkpoint(trainer: pl.Trainer) -> dict[str, Any]:
    """The dict ``trainer.save_checkpoint`` would write (loops, optimizers, schedulers, callbacks)."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)  # noqa: SLF001


def hand_over(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Make the ``fit`` being set up restore from ``checkpoint``, as ``fit(ckpt_path=...)`` would from a file."""
    trainer._checkpoint_connector._loaded_checkpoint = checkpoint  # noqa: SLF001


def every_n_epochs(callback: ModelCheckpoint) -> int:
    """A ``ModelCheckpoint``'s ``every_n_epochs`` (``None``/0 read as 1)."""
    return int(callback._every_n_epochs or 1)  # noqa: SLF001
