"""The ``train`` stage with the Hugging Face ``Trainer``: a tiny MLP on scikit-learn's digits.

The model is built locally (no hub download). The expckpt lines are the callback and the
``resume_from_checkpoint`` it finds: each Trainer save (here every epoch) becomes a checkpoint
experiment ``<exp>@<global_step>``, and inside ``dvc exp run`` training resumes from the last (or
the applied) checkpoint. ``epochs`` in params.yaml is the total to reach. Retention is the
Trainer's own settings (``save_total_limit`` 2 + the best by ``accuracy``); with
``load_best_model_at_end`` the final model, and ``model.pt``, is the best checkpoint's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from expckpt.errors import ExpCkptError
from expckpt.integrations.hf import ExpCkptTrainerCallback


class Digits(Dataset):
    """scikit-learn's 1,797 bundled 8x8 digits (offline), split the same way every time."""

    def __init__(self, train: bool, test_fraction: float = 0.2) -> None:
        data = load_digits()
        order = np.random.RandomState(0).permutation(len(data.target))
        n_test = int(len(order) * test_fraction)
        rows = order[n_test:] if train else order[:n_test]
        self.x = torch.tensor(data.images[rows] / 16.0, dtype=torch.float32).flatten(1)
        self.y = torch.tensor(data.target[rows], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.x[i], "labels": self.y[i]}


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(pixels)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def accuracy(prediction: object) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids  # type: ignore[attr-defined]
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    torch.manual_seed(params["seed"])
    args = TrainingArguments(
        output_dir="hf-out",             # the Trainer's own checkpoint-* dirs: a cache, not in Git
        num_train_epochs=params["epochs"],
        per_device_train_batch_size=params["batch_size"],
        learning_rate=float(params["lr"]),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=2,              # expckpt keeps the 2 newest checkpoints + the best
        load_best_model_at_end=True,     # the final model (and model.pt) is the best checkpoint's
        metric_for_best_model="accuracy",
        seed=params["seed"],
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    # retention from the TrainingArguments above, unless params.yaml has a checkpoint: section
    callback = ExpCkptTrainerCallback("model.pt", params.get("checkpoint"))
    trainer = Trainer(
        model=DigitsMLP(),
        args=args,
        train_dataset=Digits(train=True),
        eval_dataset=Digits(train=False),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)


if __name__ == "__main__":
    try:
        main()
    except ExpCkptError as exc:  # one line saying what is wrong and what to do (rank 0 says it)
        if os.environ.get("RANK", "0") == "0":
            print(f"train.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
