"""The ``train`` stage: a small ConvNet on the digits in ``data/``, one checkpoint per epoch.

``epochs`` in params.yaml is the total to reach. A resumed run trains only the missing epochs;
a run that is already there says so and exits 0. Inside ``dvc exp run`` every epoch becomes a
checkpoint experiment ``<exp>@<step>``; ``python train.py`` on its own saves and resumes too.

Usage: ``python train.py [--params params.yaml] [-v]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from expckpt import CheckpointLive, ConfigError, DataPosition, ExpCkptError, TrainingState
from expckpt.serialize.atomic import atomic_write_bytes
from expckpt.errors import DataError
from expckpt.phases import log_phases
from expckpt.train.progress import Progress

PROG = "train.py"
REQUIRED = {"seed": int, "epochs": int, "batch_size": int, "lr": float, "weight_decay": float}


class ConvNet(nn.Module):
    """The DVC checkpoints tutorial's network: conv 8, conv 16, dense 32, dense 10."""

    def __init__(self, height: int, width: int, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * (height // 2) * (width // 2), 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def load_params(path: Path) -> dict[str, Any]:
    """params.yaml, with every key training needs checked for presence and type."""
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run from the project root or pass --params", key=str(path))
    for key, kind in REQUIRED.items():
        if key not in params:
            raise ConfigError(f"params.yaml has no key '{key}'; add it at the top level (e.g. `{key}: ...`)", key=key)
        value = params[key]
        if kind is float and isinstance(value, str):  # `dvc exp run -S lr=1e-5` writes 1e-05, a string to YAML 1.1
            try:
                value = params[key] = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ConfigError(f"params.yaml key '{key}' must be a{'n integer' if kind is int else ' number'}, got {value!r}", key=key, value=value)
    if params["epochs"] < 1 or params["batch_size"] < 1:
        raise ConfigError("params.yaml keys 'epochs' and 'batch_size' must be at least 1", key="epochs")
    return params


def pick_device(choice: object) -> torch.device:
    """``device`` in params.yaml: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"params.yaml key 'device' must be auto, cpu or cuda, got {choice!r}", key="device", value=choice)
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml asks for device: cuda, but torch sees no GPU; use auto or cpu", key="device")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    # Bitwise-exact resume on a GPU needs deterministic kernels (cuBLAS reads this at start-up).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    return torch.device("cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except FileNotFoundError:
        raise DataError(f"{path} not found; run `dvc exp run` (or `python download.py`) to fetch the data", path=path)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        predicted = logits.argmax(1)
    model.train()
    return loss, (predicted == y).float().mean().item(), predicted


def train_epoch(live: CheckpointLive, epoch: int, state: TrainingState, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, progress: Progress) -> None:
    model, optimizer, position = state.model, state.optimizer, state.objects["position"]
    # The epoch's order comes from the global torch RNG (restored on resume); after a pause the
    # saved order is reused and the batches already trained are skipped.
    for batch in position.batches(epoch, lambda: torch.randperm(len(x)), batch_size):
        batch = batch.to(x.device)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
        progress.advance(len(batch))
        live.pause_point()  # SIGTERM / SIGUSR1 / `expckpt stop`: save here, exit 75


def write_predictions(path: Path, actual: torch.Tensor, predicted: torch.Tensor) -> None:
    rows = [{"actual": int(a), "predicted": int(p)} for a, p in zip(actual.tolist(), predicted.tolist())]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(rows).encode(), durable=False)


def train(params: dict[str, Any]) -> int:
    device = pick_device(params.get("device", "auto"))
    train_x, train_y = (t.to(device) for t in load_split(Path("data/train.npz")))
    test_x, test_y = (t.to(device) for t in load_split(Path("data/test.npz")))
    seed_everything(params["seed"])
    model = ConvNet(train_x.shape[2], train_x.shape[3]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])

    # position: where in the epoch; a paused run skips the batches it trained
    state = TrainingState(model=model, optimizer=optimizer, position=DataPosition())
    with CheckpointLive.from_env(state, params) as live:  # restores model.pt when there is one
        for epoch in live.steps(params["epochs"]):  # epochs is the total to reach
            with Progress(f"epoch {epoch}", len(train_x)) as progress:
                train_epoch(live, epoch, state, train_x, train_y, params["batch_size"], progress)
            loss, acc, predicted = evaluate(model, test_x, test_y)
            live.log_metric("loss", loss)
            live.log_metric("acc", acc)
            write_predictions(Path(live.dir) / "predictions.json", test_y, predicted)
            print(f"epoch {epoch}: loss {loss:.4f} acc {acc:.4f}", flush=True)
            live.next_step()  # -> checkpoint experiment '<exp>@<epoch>'
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and checkpoint phases")
    args = parser.parse_args(argv)
    if args.verbose:
        log_phases()  # each checkpoint's publishing phases, timed
    try:
        return train(load_params(args.params))
    except ExpCkptError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
