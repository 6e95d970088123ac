"""What expckpt relies on in Lightning's internals (``expckpt.integrations.lightning_internals``).

Each test pins one behaviour; a Lightning release that changes it fails here, by name, instead
of writing checkpoints that do not resume.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="pip install 'expckpt[lightning]' to test the Lightning adapter")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from expckpt.integrations import lightning_internals as internals  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return optimizer


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def _trainer(tmp_path: Path, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )


def test_dump_checkpoint_holds_loops_optimizers_and_epoch(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 2)
    trainer.fit(Tiny(), _loader())
    checkpoint = internals.dump_checkpoint(trainer)
    assert {"epoch", "global_step", "loops", "optimizer_states", "state_dict"} <= set(checkpoint)
    assert checkpoint["epoch"] == trainer.current_epoch == 2 and checkpoint["global_step"] == 4
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1


def test_a_handed_over_checkpoint_is_what_fit_resumes_from(tmp_path: Path) -> None:
    first = _trainer(tmp_path, 2)
    model = Tiny()
    first.fit(model, _loader())
    checkpoint = internals.dump_checkpoint(first)

    class HandOver(pl.Callback):
        batches = 0

        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            internals.hand_over(trainer, checkpoint)

        def on_train_batch_end(self, *args: object) -> None:
            HandOver.batches += 1

    again = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        callbacks=[HandOver()],
    )
    fresh = Tiny()
    again.fit(fresh, _loader())
    assert HandOver.batches == 2 and again.global_step == 6  # 1 epoch trained on top of the 2 handed over


def test_every_n_epochs_of_a_model_checkpoint(tmp_path: Path) -> None:
    assert internals.every_n_epochs(ModelCheckpoint(dirpath=tmp_path, every_n_epochs=3)) == 3
    assert internals.every_n_epochs(ModelCheckpoint(dirpath=tmp_path)) == 1
