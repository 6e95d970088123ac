"""The ``train`` stage on several processes: ``torchrun --standalone --nproc_per_node 2 train.py``.

DDP on CPU (gloo) with a small MLP on scikit-learn's bundled digits. Every rank restores the
same checkpoint; each epoch all ranks complete the step together and rank 0 publishes it as a
checkpoint experiment ``<exp>@<epoch>`` (dvclive's files are written by rank 0 only). After every
batch all ranks call ``pause_point`` together: on SIGTERM, SIGUSR1 or ``expckpt stop`` they save
mid-epoch (a ``DataPosition`` says how many batches every rank trained) and exit 75.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from expckpt import Checkpointer, DataPosition, TrainingState
from expckpt.errors import ExpCkptError
from expckpt.integrations.loop import StepLog


def digits(test_fraction: float = 0.2) -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 bundled 8x8 digits (offline), split the same way every time."""
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).flatten(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(x)))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), (x[test], y[test])


def train_epoch(steps: StepLog, epoch: int, ddp: nn.Module, data: TensorDataset, sampler: DistributedSampler, batch_size: int) -> bool:
    """This rank's batches of ``epoch`` not trained yet; False if training paused (saved mid-epoch)."""
    state = steps.state
    ddp.train()
    # the order depends on the seed and epoch only: a resume draws it again, skips the batches done
    for batch in state.objects["position"].sampled(epoch, sampler, batch_size):
        x, y = data[batch]
        state.optimizer.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        state.optimizer.step()
        if steps.checkpointer.pause_point(state):  # every rank: SIGTERM / SIGUSR1 / `expckpt stop`
            return False
    return True


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(params["seed"])  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(params["seed"] + rank)  # each rank its own dropout masks
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=float(params["lr"]), momentum=0.9)
    train_set, (test_x, test_y) = digits()
    sampler = DistributedSampler(train_set, shuffle=True, seed=params["seed"])

    checkpointer = Checkpointer.from_env(config=params.get("checkpoint"))  # every rank; rank 0 publishes
    state = TrainingState(model=model, optimizer=optimizer, position=DataPosition())  # position: where in the epoch
    steps = StepLog(checkpointer, state)  # dvclive on rank 0
    steps.restore()  # prints "Resuming from model.pt (<exp>@<step>): N steps done" on rank 0
    try:
        for epoch in range(steps.start, params["epochs"]):
            if not train_epoch(steps, epoch, ddp, train_set, sampler, params["batch_size"]):
                break  # paused: steps.finish() below exits 75
            ddp.eval()
            with torch.no_grad():
                logits = model(test_x)  # the same weights on every rank, so the same metrics
            metrics = {"loss": F.cross_entropy(logits, test_y).item(), "acc": (logits.argmax(1) == test_y).float().mean().item()}
            if rank == 0:
                print(f"epoch {epoch}: loss {metrics['loss']:.4f} acc {metrics['acc']:.4f}", flush=True)
            if steps.completed(epoch, metrics).stop:
                break
    except BaseException:
        steps.close()
        raise
    steps.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except ExpCkptError as exc:  # one line saying what is wrong and what to do (rank 0 says it)
        if os.environ.get("RANK", "0") == "0":
            print(f"train.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
