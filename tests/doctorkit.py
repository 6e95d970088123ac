"""A tiny training project for ``expckpt doctor`` tests: one script, correct or with one flaw.

Each flaw is a small, realistic way to lose exact resume: a generator of the script's own, a
scheduler or EMA left out of ``TrainingState``, data-loader workers with their own random state,
nondeterminism, a value kept in a local variable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import run

SCRIPT = """\
import os
import random

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, TensorDataset

from expckpt import CheckpointLive, TrainingState
from expckpt.state.generators import GeneratorState


class Noisy(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + float(np.random.normal()) * 0.01, self.y[i]


def batches(x, y):
    order = torch.randperm(len(x))
    return [(x[order[i:i + 8]], y[order[i:i + 8]]) for i in range(0, len(x), 8)]


def main():
    params = yaml.safe_load(open("params.yaml"))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
{setup}
    state = TrainingState(model=model, optimizer=opt{state})
    with CheckpointLive.from_env(state, params) as live:
        for epoch in live.steps(params["epochs"]):
{epoch_start}
            for xb, yb in {batches}:
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(xb).squeeze(1), yb)
                loss.backward()
                opt.step()
{after_step}
{epoch_end}
            live.log_metric("loss", {metric})
            live.next_step()


if __name__ == "__main__":
    main()
"""

LOSS = "torch.nn.functional.mse_loss(model(x).squeeze(1), y).item()"

FLAWS: dict[str, dict[str, str]] = {
    "correct": {},
    "numpy_generator": {
        "setup": "aug = np.random.default_rng(0)",
        "batches": "[(xb + torch.from_numpy(aug.normal(size=tuple(xb.shape))).float() * 0.1, yb) for xb, yb in batches(x, y)]",
    },
    "numpy_generator_fixed": {
        "setup": "aug = np.random.default_rng(0)",
        "batches": "[(xb + torch.from_numpy(aug.normal(size=tuple(xb.shape))).float() * 0.1, yb) for xb, yb in batches(x, y)]",
        "state": ", aug=GeneratorState(aug)",
    },
    "dataloader_generator": {
        "setup": "g = torch.Generator().manual_seed(0)\nloader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)",
        "batches": "loader",
    },
    "python_random": {
        "setup": "picker = random.Random(0)",
        "batches": "[(x[idx], y[idx]) for idx in [picker.sample(range(32), 8) for _ in range(4)]]",
    },
    "scheduler": {
        "setup": "sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1 + e))",
        "epoch_end": "sched.step()",
    },
    "ema": {
        "setup": "ema = torch.optim.swa_utils.AveragedModel(model)",
        "epoch_end": "ema.update_parameters(model)",
        "metric": "torch.nn.functional.mse_loss(ema(x).squeeze(1), y).item()",
    },
    "workers": {
        "setup": "loader = DataLoader(Noisy(x, y), batch_size=8, num_workers=2, persistent_workers=True)",
        "batches": "loader",
    },
    "nondeterministic": {
        "after_step": "with torch.no_grad():\n    model.bias.add_(int.from_bytes(os.urandom(2), 'little') * 1e-9)",
    },
    "local_value": {
        "setup": "seen = 0",
        "epoch_start": "seen += 1\nfor group in opt.param_groups:\n    group['lr'] = 0.05 / seen",
    },
}


def _indent(code: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in code.splitlines()) if code else ""


def script(flaw: str) -> str:
    parts = FLAWS[flaw]
    return SCRIPT.format(
        setup=_indent(parts.get("setup", ""), 4),
        state=parts.get("state", ""),
        epoch_start=_indent(parts.get("epoch_start", ""), 12),
        batches=parts.get("batches", "batches(x, y)"),
        after_step=_indent(parts.get("after_step", ""), 16),
        epoch_end=_indent(parts.get("epoch_end", ""), 12),
        metric=parts.get("metric", LOSS),
    )


DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [epochs]
    outs:
      - model.pt: {checkpoint: true, persist: true}
    always_changed: true
metrics: [dvclive/metrics.json]
plots:
  - dvclive/plots/metrics: {x: step}
"""


def tiny_project(path: Path, flaw: str = "correct", epochs: int = 4, dvc_yaml: str = DVC_YAML) -> Path:
    """A committed Git + DVC repository whose ``train`` stage runs the tiny script."""
    path.mkdir(parents=True)
    (path / "train.py").write_text(script(flaw))
    (path / "dvc.yaml").write_text(dvc_yaml)
    (path / "params.yaml").write_text(f"epochs: {epochs}\ncheckpoint:\n  every: 1\n")
    (path / ".gitignore").write_text("/model.pt\n")
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    run("dvc", "config", "core.autostage", "false", cwd=path)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "tiny project", cwd=path)
    return path


PLAIN_SCRIPT = """\
import random

import numpy as np
import torch
import yaml

from expckpt import TrainingState
from expckpt.train.checkpointer import Checkpointer


def main():
    params = yaml.safe_load(open("params.yaml"))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = TrainingState(model=model, optimizer=opt)
    ckpt = Checkpointer.from_env(config=params.get("checkpoint"))
    ckpt.restore(state)
    for step in range(state.step + 1, params["epochs"]):
        order = torch.randperm(32)
        for i in range(0, 32, 8):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[order[i:i + 8]]).squeeze(1), y[order[i:i + 8]])
            loss.backward()
            opt.step()
        if ckpt.save(state, step, {"loss": loss.item()}).stop:
            break
    ckpt.close(state)


if __name__ == "__main__":
    main()
"""

PLAIN_DVC_YAML = DVC_YAML.split("metrics:")[0]


def plain_project(path: Path) -> Path:
    """The tiny project with a plain ``Checkpointer`` loop (no dvclive)."""
    project = tiny_project(path, dvc_yaml=PLAIN_DVC_YAML)
    (project / "train.py").write_text(PLAIN_SCRIPT)
    run("git", "commit", "-qam", "plain loop", cwd=project)
    return project


def workspace_snapshot(project: Path, checkpoint: str = "model.pt") -> dict[str, object]:
    """Everything the doctor must leave as it was, byte for byte: Git's view, every ref, the cache,
    the checkpoint output (a file, or every file of a directory), params, dvc.lock and dvclive."""
    cache = project / ".dvc" / "cache"

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(project)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    output = project / checkpoint
    lock = project / "dvc.lock"
    return {
        "status": run("git", "status", "--porcelain", "--ignored", "-uall", cwd=project).stdout,
        "refs": run("git", "for-each-ref", cwd=project).stdout,
        "cache": {
            str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cache.rglob("*"))
            if p.is_file()
        },
        checkpoint: files(output) if output.is_dir() else output.read_bytes(),
        "params.yaml": (project / "params.yaml").read_bytes(),
        "dvc.lock": lock.read_bytes() if lock.exists() else None,
        "dvclive": files(project / "dvclive"),
    }


def run_doctor(project: Path, *args: str, tmp: Path) -> tuple[int, str, str]:
    """``expckpt doctor ARGS`` in ``project`` with its throwaway copies under ``tmp`` (checked gone)."""
    tmp.mkdir(exist_ok=True)
    proc = run("expckpt", "doctor", *args, cwd=project, check=False, env={"TMPDIR": str(tmp)})
    assert list(tmp.glob("expckpt-doctor-*")) == [], "the throwaway copies are removed"
    return proc.returncode, proc.stdout, proc.stderr
