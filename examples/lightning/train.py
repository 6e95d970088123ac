"""The ``train`` stage with PyTorch Lightning: a small MLP on scikit-learn's bundled digits.

The expckpt lines are the callback and the training loader: each epoch becomes a checkpoint
experiment ``<exp>@<epoch>``, and ``trainer.fit`` resumes from the last (or the applied)
checkpoint by itself inside ``dvc exp run``. ``epochs`` in params.yaml is the total to reach.
``ResumableLoader`` keeps its place in the epoch, so SIGTERM, SIGUSR1 or ``expckpt stop`` pause
at the next batch (exit 75) and the resume trains the batches left.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from expckpt.errors import ExpCkptError
from expckpt.integrations.lightning import ExpCkptCallback, ResumableLoader


class DigitsMLP(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)}


def digits_loaders(batch_size: int, seed: int = 0, test_fraction: float = 0.2) -> tuple[ResumableLoader, DataLoader]:
    """scikit-learn's 1,797 bundled 8x8 digits (offline), split the same way every time; the
    training order is drawn from ``seed`` and the epoch (a resume skips the batches trained)."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(x)))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (
        ResumableLoader(TensorDataset(x[train], y[train]), batch_size, seed=seed),
        DataLoader(TensorDataset(x[test], y[test]), batch_size=512),
    )


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    pl.seed_everything(params["seed"], verbose=False)
    train_loader, val_loader = digits_loaders(params["batch_size"], params["seed"])
    trainer = pl.Trainer(
        max_epochs=params["epochs"],
        accelerator="cpu",
        devices=params.get("devices", 1),  # 2+: run under `torchrun --nproc_per_node N` (DDP)
        strategy="ddp" if params.get("devices", 1) > 1 else "auto",
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ExpCkptCallback("model.pt", params.get("checkpoint"))],
    )
    trainer.fit(DigitsMLP(float(params["lr"])), train_loader, val_loader)


if __name__ == "__main__":
    try:
        main()
    except ExpCkptError as exc:  # one line saying what is wrong and what to do (rank 0 says it)
        if os.environ.get("RANK", "0") == "0":
            print(f"train.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
