"""PyTorch Lightning: every epoch a checkpoint experiment, and ``trainer.fit`` resumes by itself.

    from expckpt.integrations.lightning import ExpCkptCallback

    trainer = L.Trainer(max_epochs=params["epochs"], logger=False,
                        callbacks=[ExpCkptCallback(config=params.get("checkpoint"))])
    trainer.fit(model, train_loader, val_loader)     # no ckpt_path: resumes inside `dvc exp run`

At the end of each training epoch (after validation, so ``val_*`` metrics are there) the
callback logs ``trainer.callback_metrics`` with dvclive at step = epoch and hands the step to
expckpt's ``Checkpointer``, which saves per ``checkpoint.every``, publishes ``<exp>@<epoch>`` and
applies ``keep_last``/``keep_best``. The checkpoint holds the module's weights once, Lightning's
own checkpoint dict (loops, optimizers, schedulers, precision, callbacks' state such as a
``ModelCheckpoint``'s or ``EarlyStopping``'s) made loadable with ``weights_only=True``, and the
global RNG states, which Lightning does not save: a deterministic run resumed after a kill ends
bitwise equal to an uninterrupted one.

Being a Lightning ``Checkpoint`` callback, it stops Lightning from adding its default
``ModelCheckpoint``. A ``ModelCheckpoint`` you add yourself keeps writing its ``.ckpt`` files
(keep them out of Git) and its state rides along; with no ``checkpoint:`` section given, its
``monitor``/``mode``/``save_top_k``/``every_n_epochs`` become expckpt's retention
(``config_from_model_checkpoint``). Use ``logger=False`` (or a logger writing elsewhere than
``dvclive/``): this callback writes dvclive's files, one step per epoch.

A pause (SIGTERM, SIGUSR1, ``expckpt stop``) is taken after the next optimizer step when every
training loader keeps its position (``ResumableLoader``, or any loader with ``state_dict`` and
``load_state_dict``): the checkpoint holds Lightning's loop state inside the epoch and the
loader's position, and ``fit`` resumed from it trains the batches left, bitwise as if never
stopped (Lightning's running means of ``on_epoch`` training metrics start again at the resume).
With a plain ``DataLoader`` the pause waits for the epoch's end (but on SIGTERM Lightning stops
at its next batch itself: saved as paused, not resumed exactly). The last batch of an epoch, or
one that validation follows, leaves the pause to the epoch's end too (validation runs first).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from expckpt.train.checkpointer import Checkpointer
from expckpt.train.pause import TrainingPaused
from expckpt.integrations import lightning_internals as internals
from expckpt.integrations.loop import StepLog, plain
from expckpt.integrations.resumable import ResumableLoader
from expckpt.state.state import TrainingState

__all__ = ["ExpCkptCallback", "LightningLoopState", "ResumableLoader", "config_from_model_checkpoint"]


class LightningLoopState:
    """Lightning's checkpoint dict, minus the weights, through ``state_dict``/``load_state_dict``.

    ``load_state_dict`` only keeps the dict: Lightning itself puts it back into its loops,
    optimizers and callbacks while ``fit`` sets up (``ExpCkptCallback.setup`` hands it over).
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self.trainer = trainer
        self.loaded: dict[str, Any] | None = None
        self._warned = False

    def state_dict(self) -> dict[str, Any]:
        checkpoint = internals.dump_checkpoint(self.trainer)
        checkpoint.pop("state_dict", None)  # the module's weights are saved once, as "model"
        dropped: list[str] = []
        state = plain(checkpoint, dropped, "checkpoint")
        if dropped and not self._warned and self.trainer.is_global_zero:
            self._warned = True
            warnings.warn(
                "expckpt: left out of the checkpoint (not loadable with weights_only=True, not needed to resume): "
                + ", ".join(dropped),
                stacklevel=2,
            )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loaded = dict(state)


def config_from_model_checkpoint(callback: ModelCheckpoint) -> dict[str, Any]:
    """A ``checkpoint:`` section equivalent to a ``ModelCheckpoint``'s retention settings.

    ``save_top_k: k`` with a ``monitor`` keeps the k best (and always the newest, which expckpt
    keeps for resume); ``save_top_k: -1`` keeps all; ``every_n_epochs`` saves every n-th epoch.
    """
    section: dict[str, Any] = {"every": max(internals.every_n_epochs(callback), 1)}
    top_k = callback.save_top_k
    if callback.monitor and top_k > 0:
        section.update(monitor=callback.monitor, mode=callback.mode, keep_best=top_k, keep_last=1)
    elif top_k == -1:
        section["keep_last"] = None
    else:
        section["keep_last"] = max(top_k, 1)
    return section


class ExpCkptCallback(Checkpoint):
    """Makes each training epoch a checkpoint experiment ``<exp>@<epoch>`` and resumes ``fit``."""

    def __init__(
        self,
        path: str | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        live_dir: str = "dvclive",
    ) -> None:
        self.path = path
        self.config = config
        self.live_dir = live_dir
        self.steps: StepLog | None = None
        self.resumed: Any = None

    @property
    def state_key(self) -> str:
        return "ExpCkptCallback"

    def _config(self, trainer: pl.Trainer) -> Mapping[str, Any] | None:
        if self.config is not None:
            return self.config
        theirs = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
        return config_from_model_checkpoint(theirs[0]) if theirs else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Restore before Lightning restores anything: weights and RNG now, the rest through Lightning."""
        if stage != "fit":
            return
        loops = LightningLoopState(trainer)
        checkpointer = Checkpointer.from_env(self.path, self._config(trainer), live_dir=self.live_dir)
        self.steps = StepLog(checkpointer, TrainingState(model=pl_module, lightning=loops))
        self.resumed = self.steps.restore()
        if self.resumed is None or loops.loaded is None:
            return
        checkpoint = dict(loops.loaded)
        checkpoint["state_dict"] = pl_module.state_dict()  # restored already; Lightning loads it again
        internals.hand_over(trainer, checkpoint)  # before `fit` restores the module, callbacks and loops

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps is None or trainer.sanity_checking:
            return
        if self.steps.completed(trainer.current_epoch, trainer.callback_metrics).stop:
            trainer.should_stop = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """A requested pause is taken here (collective under DDP) when the batch ended an optimizer
        step inside the epoch and the training loaders keep their position: saved, exit 75."""
        if self.steps is None or not _may_pause_after(trainer, batch_idx):
            return
        if self.steps.checkpointer.pause_point(self.steps.state):
            raise TrainingPaused(self.steps.checkpointer.pause_requested or "pause")  # on_exception exits 75

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps is not None:
            steps, self.steps = self.steps, None
            steps.finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Ctrl+C (the core's handler: one line naming the last checkpoint, exit 130) or a failure.

        Lightning ends ``fit`` on SIGTERM itself (its ``SIGTERMException`` at a batch boundary); with
        the core's pause pending, that is the pause: the state where it stopped is saved, exit 75."""
        if self.steps is not None:
            steps, self.steps = self.steps, None
            if steps.checkpointer.pause_requested:
                steps.finish()  # saves as paused, then raises TrainingPaused (exit 75)
            else:
                steps.close()


def _may_pause_after(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether a pause after batch ``batch_idx`` resumes exactly: an optimizer step just ended, the
    epoch goes on without validation first, and every training loader keeps its position."""
    done = batch_idx + 1
    if done % trainer.accumulate_grad_batches or done >= trainer.num_training_batches:
        return False
    if isinstance(trainer.val_check_batch, int) and done % trainer.val_check_batch == 0:
        return False
    return all(_keeps_position(loader) for loader in _leaves(trainer.train_dataloader))


def _leaves(loaders: Any) -> list[Any]:
    if isinstance(loaders, Mapping):
        return [leaf for value in loaders.values() for leaf in _leaves(value)]
    if isinstance(loaders, (list, tuple)):
        return [leaf for value in loaders for leaf in _leaves(value)]
    return [loaders]


def _keeps_position(loader: Any) -> bool:
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))
