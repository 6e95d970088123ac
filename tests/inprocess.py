"""Checkpointing in this process, on a real temporary Git + DVC repository, without training.

A small project (one ``train`` stage whose ``model.pt`` is a ``checkpoint: true, persist: true``
output, dvclive metrics declared) is built once per session with the real ``git`` and ``dvc``
and copied for each test. ``train`` drives a real ``Checkpointer`` with the variables
``dvc exp run`` sets, passed as ``env=``, on a tiny model whose steps depend only on the seed
and the step: two runs with the same seed write byte-identical checkpoint files, as two real
runs of the same experiment do. ``crash_at`` makes a checkpoint stop at one of its publishing
phases (``expckpt.phases``), as a kill there would, minus the temp file a kill leaves behind.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run
from expckpt import phases
from expckpt.train.checkpointer import Checkpointer
from expckpt.state.state import TrainingState

DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps:
      - train.py
    params:
      - lr
    outs:
      - model.pt:
          checkpoint: true
          persist: true
metrics:
  - dvclive/metrics.json
"""
_TEMPLATE: dict[str, Path] = {}
_LOCK = threading.Lock()


def template(factory: pytest.TempPathFactory) -> Path:
    """The session's template repository (built on first use; never modified afterwards)."""
    with _LOCK:
        if "repo" not in _TEMPLATE:
            root = factory.mktemp("inprocess-template") / "p"
            root.mkdir()
            (root / "dvc.yaml").write_text(DVC_YAML)
            (root / "params.yaml").write_text("lr: 0.1\n")
            (root / "train.py").write_text("# the stage command; these tests drive the Checkpointer in process\n")
            (root / ".gitignore").write_text("/model.pt\n")
            run("git", "init", "-q", cwd=root)
            run("dvc", "init", "-q", cwd=root)
            run("git", "add", "-A", cwd=root)
            run("git", "commit", "-qm", "project", cwd=root)
            _TEMPLATE["repo"] = root
        return _TEMPLATE["repo"]


def new_repo(factory: pytest.TempPathFactory, dest: Path) -> Path:
    """A private copy of the template (same commit, so the same baseline)."""
    shutil.copytree(template(factory), dest, symlinks=True)
    return dest


def baseline(project: Path) -> str:
    return run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()


def dvc_env(project: Path, exp: str) -> dict[str, str]:
    """What ``dvc exp run -n <exp>`` sets for the stage command."""
    return {
        "DVC_ROOT": str(project),
        "DVC_EXP_NAME": exp,
        "DVC_EXP_BASELINE_REV": baseline(project),
        "DVC_STAGE": "train",
    }


def new_state(seed: int = 0) -> TrainingState:
    """A tiny model and optimizer, seeded like a training script seeds them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    return TrainingState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


def train_step(state: TrainingState, step: int) -> dict[str, float]:
    """One optimizer step on data fixed by ``step``; returns ``loss`` and ``acc``."""
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    model, optimizer = state.model, state.optimizer
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return {"loss": loss.item(), "acc": acc}


def checkpointer(project: Path, exp: str, config: Mapping[str, Any] | None = None) -> Checkpointer:
    return Checkpointer.from_env(config=dict(config or {}), env=dvc_env(project, exp))


def train(
    project: Path,
    exp: str,
    total: int,
    *,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
) -> tuple[Checkpointer, TrainingState]:
    """Restore, then train and save steps up to ``total`` (the cwd must be ``project``)."""
    state = new_state(seed)
    ckpt = checkpointer(project, exp, config)
    ckpt.restore(state)
    for step in range(state.step + 1, total):
        ckpt.save(state, step, train_step(state, step))
    ckpt.close(state)
    return ckpt, state


class Crash(BaseException):
    """Stands for a kill at a publishing phase (a BaseException, like KeyboardInterrupt)."""


@contextlib.contextmanager
def crash_at(point: str, step: int) -> Iterator[None]:
    """Within the block, the checkpoint of ``step`` stops at phase ``point`` by raising Crash."""

    def listener(name: str, at: int) -> None:
        if (name, at) == (point, step):
            raise Crash(f"{point}:{step}")

    unsubscribe = phases.subscribe(listener)
    try:
        with pytest.raises(Crash):
            yield
    finally:
        unsubscribe()


def refs(project: Path) -> dict[str, str]:
    """``<exp>@<step>`` -> commit for every checkpoint ref."""
    out = run("git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps", cwd=project).stdout
    found = {}
    for line in out.splitlines():
        ref, sha = line.split()
        if "@" in ref and not ref.startswith("refs/exps/exec/"):
            found[ref.rsplit("/", 1)[-1]] = sha
    return found
