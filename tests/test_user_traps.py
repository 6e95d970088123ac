"""The traps of porting a script (issue #14), each reproduced in-process against the real library."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from expckpt import Checkpointer, CheckpointLive, ConfigError, TrainingState
from expckpt.errors import CheckpointError
from expckpt.serialize.checkpoint_file import load_checkpoint, write_temp


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def roundtrip(state: TrainingState, tmp_path: Path) -> dict:
    written = write_temp(state.capture(), tmp_path / "model.pt")
    written.publish()
    return load_checkpoint(tmp_path / "model.pt")


# 1. extras restored in place ------------------------------------------------------------------
def test_objects_the_user_holds_are_the_ones_restored(tmp_path: Path) -> None:
    """A dict (EMA weights, a counter) the user keeps a reference to stays the saved one."""
    saved = TrainingState(model=mlp(0), ema={"weights": torch.ones(3), "decay": 0.9}, progress={"counter": 4})
    payload = roundtrip(saved, tmp_path)

    ema = {"weights": torch.zeros(3), "decay": 0.5}
    progress = {"counter": 0}
    held_tensor = ema["weights"]
    resumed = TrainingState(model=mlp(1), ema=ema, progress=progress)
    resumed.restore(payload)

    assert progress["counter"] == 4 and ema["decay"] == 0.9
    assert ema["weights"] is held_tensor and torch.equal(held_tensor, torch.ones(3))
    progress["counter"] += 1
    assert resumed.capture()["progress"] == {"counter": 5}  # what the user changes is what gets saved


def test_plain_values_must_live_in_a_dict() -> None:
    with pytest.raises(
        ConfigError, match=r"TrainingState\(counter=\.\.\.\) needs an object with state_dict\(\).*got a int"
    ):
        TrainingState(model=mlp(0), counter=3)


# 4. NumPy values and unsupported types ---------------------------------------------------------
def test_numpy_values_round_trip_as_numpy_and_load_safely(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    saved = TrainingState(model=mlp(0), extras={"hist": arr, "mean": np.float64(2.5), "ids": [np.int64(7)]})
    payload = roundtrip(saved, tmp_path)  # torch.load(weights_only=True) inside

    target_arr = np.zeros((2, 3), dtype=np.float32)
    extras = {"hist": target_arr}
    resumed = TrainingState(model=mlp(1), extras=extras)
    resumed.restore(payload)
    assert extras["hist"] is target_arr and np.array_equal(target_arr, arr)
    assert isinstance(extras["mean"], np.float64) and extras["mean"] == 2.5
    assert isinstance(extras["ids"][0], np.int64) and extras["ids"][0] == 7


def test_an_unsaveable_value_is_refused_at_save_time_naming_the_key() -> None:
    state = TrainingState(model=mlp(0), extras={"seen": {1, 2}})
    with pytest.raises(CheckpointError, match=r"^extras\['seen'\] holds a builtins\.set, which a safe checkpoint"):
        state.capture()


# 3. seeding after restore --------------------------------------------------------------------
def draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(2)


def test_seeding_after_restore_does_not_break_an_exact_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tutorial's order (restore, then seed) gets the checkpoint's RNG at the first step."""
    monkeypatch.chdir(tmp_path)
    state = TrainingState(model=mlp(0))
    with CheckpointLive.from_env(state, {}) as live:
        for _ in live.steps(1):
            torch.rand(5), random.random(), np.random.rand()
            live.next_step()
    expected = draws()  # what the uninterrupted run draws in its next step

    state = TrainingState(model=mlp(0))
    with CheckpointLive.from_env(state, {}) as live:
        random.seed(20), np.random.seed(20), torch.manual_seed(20)  # seeding after restoring
        assert live.resumed is not None and live.resumed.step == 0
        for _ in live.steps(2):
            got = draws()
            live.next_step()
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_steps_is_empty_when_already_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    state = TrainingState(model=mlp(0))
    with CheckpointLive.from_env(state, {}) as live:
        for _ in live.steps(2):
            live.next_step()
    state = TrainingState(model=mlp(0))
    with CheckpointLive.from_env(state, {}) as live:
        assert list(live.steps(2)) == []
    assert "model.pt already has 2 steps (total 2); nothing to train" in capsys.readouterr().out


# 2. the user's own torch.save to the checkpoint path ----------------------------------------------
def test_another_writer_of_the_checkpoint_file_stops_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = mlp(0)
    state = TrainingState(model=model)
    checkpointer = Checkpointer.from_env("model.pt", {})
    checkpointer.restore(state)
    checkpointer.save(state, 0, {"loss": 1.0})
    torch.save(model.state_dict(), "model.pt")  # the tutorial's own save
    with pytest.raises(CheckpointError, match=r"^model\.pt was changed by something other than expckpt .*torch\.save"):
        checkpointer.save(state, 1, {"loss": 0.9})


# 5. optimizer settings changed since the checkpoint, with a scheduler ----------------------------
def one_cycle(max_lr: float, total: int, steps: int) -> TrainingState:
    model = mlp(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return TrainingState(model=model, optimizer=optimizer, scheduler=scheduler)


def test_a_new_lr_rebuilds_a_one_cycle_schedule_and_says_so(tmp_path: Path) -> None:
    payload = roundtrip(one_cycle(0.01, 100, 30), tmp_path)
    resumed = one_cycle(0.001, 100, 0)
    lines = resumed.restore(payload)
    reference = one_cycle(0.001, 100, 30)  # a run that used 0.001 from the start
    assert resumed.scheduler.last_epoch == 30
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])
    resumed.optimizer.step(), resumed.scheduler.step(), reference.optimizer.step(), reference.scheduler.step()
    assert resumed.scheduler.get_last_lr() == pytest.approx(reference.scheduler.get_last_lr())
    assert len(lines) == 1 and "optimizer lr is 0.001 now (0.01 in the checkpoint)" in lines[0]
    assert "OneCycleLR goes on from its step 30 rebuilt with the new value" in lines[0]


def test_a_longer_one_cycle_schedule_is_refused_in_one_line(tmp_path: Path) -> None:
    payload = roundtrip(one_cycle(0.01, 100, 30), tmp_path)
    resumed = one_cycle(0.01, 110, 0)  # -S epochs=11
    with pytest.raises(
        ConfigError, match=r"^the LR scheduler \(OneCycleLR\) has total_steps 110 now but 100 in the checkpoint"
    ):
        resumed.restore(payload)


def test_a_new_lr_without_a_closed_form_schedule_is_refused(tmp_path: Path) -> None:
    model = mlp(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainingState(
        model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lambda _: 0.9)
    )
    payload = roundtrip(state, tmp_path)
    optimizer2 = torch.optim.SGD(mlp(0).parameters(), lr=0.01)
    resumed = TrainingState(
        model=mlp(0),
        optimizer=optimizer2,
        scheduler=torch.optim.lr_scheduler.MultiplicativeLR(optimizer2, lambda _: 0.9),
    )
    with pytest.raises(ConfigError, match=r"MultiplicativeLR\) cannot recompute its learning rate"):
        resumed.restore(payload)


def test_a_new_lr_without_a_scheduler_is_used(tmp_path: Path) -> None:
    model = mlp(0)
    payload = roundtrip(TrainingState(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.01)), tmp_path)
    model = mlp(0)
    resumed = TrainingState(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.001))
    assert resumed.restore(payload) == [
        "expckpt: optimizer lr is 0.001 now (0.01 in the checkpoint); training goes on with the new value"
    ]
    assert resumed.optimizer.param_groups[0]["lr"] == 0.001


# 9. divergence detection without a `loss` metric ---------------------------------------------------
def test_divergence_detection_off_is_said_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    checkpointer = Checkpointer.from_env("model.pt", {})
    checkpointer.echo = lines.append
    state = TrainingState(model=mlp(0))
    for step in range(3):
        checkpointer.save(state, step, {"error": 1.0})
    said = [line for line in lines if "divergence detection is off" in line]
    assert said == [
        "expckpt: divergence detection is off: this run logs no loss metric (looked for loss,"
        " train_loss, train/loss, eval_loss, val_loss and the like); set checkpoint.divergence_metric"
        " to the metric it logs"
    ]


# the training watch agrees with the after-the-fact report, step by step ---------------------------
@pytest.mark.parametrize("seed", range(40))
def test_watch_matches_report_on_random_histories(seed: int) -> None:
    from expckpt.policy.report import analyse
    from expckpt.policy.watch import TrainingWatch

    rng = random.Random(seed)
    watch = TrainingWatch(monitor="acc", mode="max", divergence_metric="loss", divergence_steps=2, patience=3)
    history = []
    for step in range(12):
        metrics = {"acc": rng.choice([0.1, 0.2, 0.3, float("nan")]), "loss": rng.choice([1.0, 2.0, 3.0, float("inf")])}
        if rng.random() < 0.2:
            metrics.pop("loss")
        history.append((step, metrics))
        seen = watch.observe(step, metrics)
        report = analyse(history, monitor="acc", mode="max", divergence_metric="loss", divergence_steps=2, patience=3)
        assert ("diverging" in seen.problems) == report.diverging, (step, history)
        assert ("plateau" in seen.problems) == report.plateau, (step, history)
        assert (watch.best[1] if watch.best else None) == report.best_step
