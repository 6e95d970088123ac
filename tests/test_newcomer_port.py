"""Issue 22: the traps met porting pytorch/examples' ``mnist/main.py`` by the README alone.

Each test reproduces one of the issue's numbered items against the real library (in process,
on real Git + DVC repositories) or, where only DVC itself shows the trap, through ``dvc exp run``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from expckpt import ConfigError, TrainingState
from expckpt.checkpoint_file import load_checkpoint, write_temp


def step_lr(gamma: float) -> TrainingState:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    return TrainingState(model=model, optimizer=optimizer,
                         scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma))


# 9. messages ---------------------------------------------------------------------------------------
def test_a_changed_gamma_is_refused_without_blaming_epochs_or_batches(tmp_path: Path) -> None:
    """``-S gamma=0.5`` on a resume: the hint names the setting, not the epochs or the batch count."""
    written = write_temp(step_lr(0.7).capture(), tmp_path / "model.pt")
    written.publish()
    payload = load_checkpoint(tmp_path / "model.pt")
    with pytest.raises(ConfigError) as refused:
        step_lr(0.5).restore(payload)
    assert str(refused.value) == (
        "the LR scheduler (StepLR) has gamma 0.5 now but 0.7 in the checkpoint; a restored schedule cannot"
        " change shape: keep gamma 0.7 to resume from this checkpoint, or start over with `expckpt reset`"
    )
