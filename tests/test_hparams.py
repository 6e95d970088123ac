"""hparams: settings chosen anew on the command line win over the checkpoint's, or are refused."""

from __future__ import annotations

import pytest
import torch

from expckpt.errors import ConfigError
from expckpt.state.hparams import optimizer_hparams, reconcile, snapshot


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1)


def trained(lr: float, steps: int, scheduler: str | None = "step") -> tuple[dict, dict | None, dict]:
    """A checkpoint's optimizer state, scheduler state and hparams after ``steps`` steps."""
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if scheduler == "step" else None
    for _ in range(steps):
        opt.zero_grad()
        m(torch.ones(1, 2)).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
    return opt.state_dict(), (sched.state_dict() if sched else None), optimizer_hparams(opt)


def test_optimizer_hparams_are_the_plain_constructor_settings() -> None:
    adam = torch.optim.Adam(model().parameters(), lr=0.01, betas=(0.8, 0.9))
    found = optimizer_hparams(adam)
    assert found["lr"] == 0.01 and found["betas"] == (0.8, 0.9) and found["amsgrad"] is False
    assert all(isinstance(v, (int, float, bool, str, tuple, type(None))) for v in found.values())
    assert optimizer_hparams(object()) == {}


def test_nothing_changed_means_nothing_said_and_the_saved_state_stays() -> None:
    saved_opt, _, saved_hp = trained(0.1, 3, scheduler=None)
    opt = torch.optim.SGD(model().parameters(), lr=0.1, momentum=0.9)
    fresh = snapshot(opt, None)
    opt.load_state_dict(saved_opt)
    assert reconcile("optimizer", opt, None, fresh, saved_hp, None) == []
    assert opt.param_groups[0]["lr"] == 0.1


def test_a_new_lr_without_a_scheduler_is_used_and_said() -> None:
    saved_opt, _, saved_hp = trained(0.1, 3, scheduler=None)
    opt = torch.optim.SGD(model().parameters(), lr=0.05, momentum=0.9)
    fresh = snapshot(opt, None)
    opt.load_state_dict(saved_opt)  # puts lr 0.1 back
    lines = reconcile("optimizer", opt, None, fresh, saved_hp, None)
    assert lines == ["expckpt: optimizer lr is 0.05 now (0.1 in the checkpoint); training goes on with the new value"]
    assert opt.param_groups[0]["lr"] == 0.05
    assert "momentum_buffer" in opt.state[opt.param_groups[0]["params"][0]]  # the rest of the state is kept


def test_a_new_lr_with_a_scheduler_rebuilds_the_schedule_at_the_restored_step() -> None:
    saved_opt, saved_sched, saved_hp = trained(0.1, 3)
    opt = torch.optim.SGD(model().parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    fresh = snapshot(opt, sched)
    opt.load_state_dict(saved_opt)
    sched.load_state_dict(saved_sched)
    lines = reconcile("optimizer", opt, sched, fresh, saved_hp, saved_sched)
    # step 3 of StepLR(step_size=2, gamma=0.5) from 0.2: 0.2 * 0.5 ** (3 // 2)
    assert lines == [
        "expckpt: optimizer lr is 0.2 now (0.1 in the checkpoint); StepLR goes on from its step 3"
        " rebuilt with the new value (learning rate now 0.1)"
    ]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1) and opt.param_groups[0]["initial_lr"] == 0.2
    assert sched.base_lrs == [0.2] and sched.get_last_lr() == [pytest.approx(0.1)]
    sched.step()  # the next step follows the new schedule: 0.2 * 0.5 ** (4 // 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_a_schedule_of_another_shape_is_refused_in_one_line() -> None:
    _, saved_sched, saved_hp = trained(0.1, 3)
    opt = torch.optim.SGD(model().parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    fresh = snapshot(opt, sched)
    with pytest.raises(ConfigError) as info:
        reconcile("optimizer", opt, sched, fresh, saved_hp, saved_sched)
    assert str(info.value) == (
        "the LR scheduler (StepLR) has step_size 3 now but 2 in the checkpoint (did epochs or the batch count"
        " change?); a restored schedule cannot change shape: keep step_size 2 to resume from this checkpoint,"
        " or start over with `expckpt reset`"
    )
    assert "\n" not in str(info.value)


def test_a_new_lr_under_a_scheduler_without_a_closed_form_is_refused() -> None:
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    saved_opt, saved_sched, saved_hp = opt.state_dict(), plateau.state_dict(), optimizer_hparams(opt)
    opt2 = torch.optim.SGD(model().parameters(), lr=0.3)
    plateau2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2)
    fresh = snapshot(opt2, plateau2)
    opt2.load_state_dict(saved_opt)
    plateau2.load_state_dict(saved_sched)
    with pytest.raises(ConfigError) as info:
        reconcile("optimizer", opt2, plateau2, fresh, saved_hp, saved_sched)
    assert str(info.value) == (
        "optimizer lr is 0.3 now (0.1 in the checkpoint), but the restored LR scheduler (ReduceLROnPlateau)"
        " cannot recompute its learning rate for a new value; keep the old settings to resume, or start over"
        " with `expckpt reset`"
    )


def test_a_checkpoint_without_hparams_changes_nothing() -> None:
    opt = torch.optim.SGD(model().parameters(), lr=0.3)
    fresh = snapshot(opt, None)
    assert reconcile("optimizer", opt, None, fresh, None, None) == []
    assert opt.param_groups[0]["lr"] == 0.3
