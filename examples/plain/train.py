"""The ``train`` stage as a hand-written loop over expckpt's core: no dvclive, no framework.

A small MLP on scikit-learn's bundled digits (offline). The three expckpt calls are
``restore`` (where to start), ``save`` (each completed epoch; a ``Decision`` says whether to
stop) and ``close`` (the last epoch if the policy skipped it, then wait for the writer), plus
``pause_point`` after every batch: on SIGTERM, SIGUSR1 or ``expckpt stop`` it saves the state
mid-epoch (a ``DataPosition`` in it says which batches were trained) and ``close`` exits 75; the
resumed run trains only the batches left.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from expckpt import Checkpointer, DataPosition, ExpCkptError, TrainingState


def digits(test_fraction: float = 0.2) -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 bundled 8x8 digits (offline), split the same way every time."""
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).flatten(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(x)))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), (x[test], y[test])


def train_epoch(checkpointer: Checkpointer, state: TrainingState, epoch: int, data: TensorDataset, batch_size: int) -> bool:
    """The batches of ``epoch`` not trained yet; False if training paused (saved mid-epoch)."""
    model, optimizer, position = state.model, state.optimizer, state.objects["position"]
    model.train()
    # the order comes from the global torch RNG (restored on resume); a paused epoch keeps its order
    for batch in position.batches(epoch, lambda: torch.randperm(len(data)), batch_size):
        x, y = data[batch]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if checkpointer.pause_point(state):  # SIGTERM / SIGUSR1 / `expckpt stop`: saved here
            return False
    return True


def train() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(params["seed"])
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(params["lr"]), momentum=0.9)
    train_set, (test_x, test_y) = digits()

    checkpointer = Checkpointer.from_env(config=params.get("checkpoint"))
    state = TrainingState(model=model, optimizer=optimizer, position=DataPosition())  # position: where in the epoch
    resumed = checkpointer.restore(state)  # prints "Resuming from model.pt (<exp>@<step>): N steps done"
    try:
        for epoch in range(resumed.step + 1 if resumed else 0, params["epochs"]):
            if not train_epoch(checkpointer, state, epoch, train_set, params["batch_size"]):
                break  # paused: close() below exits 75
            model.eval()
            with torch.no_grad():
                logits = model(test_x)
            metrics = {"loss": F.cross_entropy(logits, test_y).item(), "acc": (logits.argmax(1) == test_y).float().mean().item()}
            print(f"epoch {epoch}: loss {metrics['loss']:.4f} acc {metrics['acc']:.4f}", flush=True)
            if checkpointer.save(state, epoch, metrics).stop:
                break
    except BaseException:
        checkpointer.close()
        raise
    checkpointer.close(state)  # after a pause: raises SystemExit(75)


def main() -> int:
    try:
        train()
    except ExpCkptError as exc:  # one line saying what is wrong and what to do
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
