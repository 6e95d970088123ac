"""Pins the torch LR-scheduler internals ``expckpt.state.torchsched`` relies on, on the installed torch.

A torch release that renames or drops one fails here with one line naming it, instead of
resuming a run at a wrong learning rate.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from expckpt.errors import ConfigError
from expckpt.state.torchsched import can_recompute, recompute_lrs, set_last_lr

S = torch.optim.lr_scheduler
RECOMPUTABLE: dict[str, Callable[[Any], Any]] = {
    "StepLR": lambda o: S.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[1, 3], gamma=0.5),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=10),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.5, total_iters=4),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=2),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=8, power=2.0),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=20),
    "LambdaLR": lambda o: S.LambdaLR(o, lambda step: 0.9**step),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3),
}


def stepped(build: Callable[[Any], Any], steps: int = 5) -> tuple[torch.optim.Optimizer, Any]:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD(
        [{"params": [param]}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01}], lr=0.1, momentum=0.9
    )
    scheduler = build(optimizer)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


@pytest.mark.parametrize("kind", sorted(RECOMPUTABLE))
def test_the_rate_of_the_restored_step_is_computed_again_exactly_and_silently(kind: str) -> None:
    _, scheduler = stepped(RECOMPUTABLE[kind])
    assert can_recompute(scheduler), f"torch {torch.__version__}: {kind} lost the closed form expckpt recomputes with"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrs = recompute_lrs(scheduler)
    assert lrs == pytest.approx(scheduler.get_last_lr(), rel=1e-9), (
        f"torch {torch.__version__}: {kind}'s recomputed rate differs from the one it stepped to"
    )


@pytest.mark.parametrize("kind", sorted(RECOMPUTABLE))
def test_get_last_lr_returns_what_set_last_lr_set(kind: str) -> None:
    optimizer, scheduler = stepped(RECOMPUTABLE[kind])
    set_last_lr(scheduler, [0.25, 0.5])
    assert scheduler.get_last_lr() == [0.25, 0.5], f"torch {torch.__version__}: get_last_lr() no longer reads _last_lr"
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups], "step() sets it again"


def test_schedulers_that_depend_on_the_last_rate_are_not_recomputed() -> None:
    _, plateau = stepped(lambda o: S.ReduceLROnPlateau(o), steps=0)
    _, multiplicative = stepped(lambda o: S.MultiplicativeLR(o, lambda step: 0.9))
    assert not can_recompute(plateau) and not can_recompute(multiplicative)


def test_a_scheduler_without_last_lr_is_one_clear_error() -> None:
    class Bare:
        pass

    with pytest.raises(ConfigError, match=r"^this torch \(.+\) keeps no _last_lr on Bare, which expckpt needs"):
        set_last_lr(Bare(), [0.1])
