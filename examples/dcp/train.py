"""The ``train`` stage, sharded: ``torchrun --standalone --nproc_per_node 2 train.py``.

FSDP2 (``fully_shard``) on CPU (gloo) with a small MLP on scikit-learn's bundled digits. Each
rank holds a shard of the parameters and of the optimizer state; each epoch every rank writes
its shard with ``torch.distributed.checkpoint`` and rank 0 publishes the directory ``ckpt/`` as
the checkpoint experiment ``<exp>@<epoch>`` (dvclive's files are written by rank 0 only). After
every batch all ranks call ``pause_point`` together: on SIGTERM, SIGUSR1 or ``expckpt stop`` they
save mid-epoch (a ``DataPosition`` says how many batches every rank trained) and exit 75.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from sklearn.datasets import load_digits
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F
from torch.utils.data import DistributedSampler, TensorDataset

from expckpt import Checkpointer, DataPosition
from expckpt.errors import ExpCkptError
from expckpt.integrations.dcp import DcpHandler
from expckpt.integrations.loop import StepLog


class ModelState(Stateful):
    """The model as DCP saves it: each rank its shards (FSDP's DTensors). Its own entry, ``model``:
    ``checkpoint.init_from`` loads only this one into a fresh trial."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state_dict)


class OptimizerState(Stateful):
    """The optimizer's sharded state, keyed by parameter name."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state_dict)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


def digits(test_fraction: float = 0.2) -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 bundled 8x8 digits (offline), split the same way every time."""
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).flatten(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(x)))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), (x[test], y[test])


def train_epoch(steps: StepLog, epoch: int, data: TensorDataset, sampler: DistributedSampler, batch_size: int) -> bool:
    """This rank's batches of ``epoch`` not trained yet; False if training paused (saved mid-epoch)."""
    model, optimizer = steps.state["model"].model, steps.state["optimizer"].optimizer
    position = steps.state["position"]
    model.train()
    # the order depends on the seed and epoch only: a resume draws it again, skips the batches done
    for batch in position.sampled(epoch, sampler, batch_size):
        x, y = data[batch]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if steps.checkpointer.pause_point(steps.state):  # every rank: SIGTERM / SIGUSR1 / `expckpt stop`
            return False
    return True


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = make_model(params["seed"])
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(params["seed"] + rank)  # each rank its own dropout masks
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(params["lr"]))
    train_set, (test_x, test_y) = digits()
    sampler = DistributedSampler(train_set, shuffle=True, seed=params["seed"])

    checkpointer = Checkpointer.from_env("ckpt/", params.get("checkpoint"), handler=DcpHandler)
    state = {
        "model": ModelState(model),
        "optimizer": OptimizerState(model, optimizer),
        "position": DataPosition(),  # where in the epoch
    }
    steps = StepLog(checkpointer, state)  # dvclive on rank 0
    steps.restore()  # rank 0 prints "Resuming from ckpt (<exp>@<step>): N steps done"
    try:
        for epoch in range(steps.start, params["epochs"]):
            if not train_epoch(steps, epoch, train_set, sampler, params["batch_size"]):
                break  # paused: steps.finish() below exits 75
            model.eval()
            with torch.no_grad():
                logits = model(test_x)  # FSDP gathers the full weights: the same metrics on every rank
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
