"""The glue every framework adapter shares (``expckpt.integrations.loop``), without a framework."""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from expckpt import TrainingState
from expckpt.train.checkpointer import Checkpointer
from expckpt.integrations.loop import StepLog, plain, scalar_metrics


class AttributeDict(dict):
    """Like Lightning's hparams container: a dict subclass that weights_only refuses."""


class Stateful:
    def __init__(self) -> None:
        self.value = 0

    def state_dict(self) -> dict[str, int]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.value = state["value"]


def test_plain_makes_framework_state_loadable_with_weights_only() -> None:
    dropped: list[str] = []
    state = {
        "hparams": AttributeDict(lr=0.1, layers=[1, 2]),
        "loops": OrderedDict(epoch=np.int64(3), progress={"done": True}),
        "betas": (0.9, np.float32(0.999)),
        "weights": torch.ones(2),
        "hparams_type": AttributeDict,  # a class: left out
        "items": [1, object()],
    }
    converted = plain(state, dropped, "checkpoint")
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert loaded["hparams"] == {"lr": 0.1, "layers": [1, 2]} and type(loaded["hparams"]) is dict
    assert loaded["loops"] == {"epoch": 3, "progress": {"done": True}}
    assert loaded["betas"] == (0.9, pytest.approx(0.999))
    assert torch.equal(loaded["weights"], torch.ones(2))
    assert loaded["items"] == [1, None]  # positions kept
    assert dropped == ["checkpoint['hparams_type']", "checkpoint['items'][1]"]
    raw = io.BytesIO()
    torch.save(state, raw)
    with pytest.raises(Exception, match="Weights only load failed"):  # what plain() is for
        torch.load(io.BytesIO(raw.getvalue()), weights_only=True)


def test_scalar_metrics_keeps_numbers_and_one_element_tensors() -> None:
    metrics = {"loss": torch.tensor(0.5), "acc": 1, "flag": True, "vector": torch.ones(3), "name": "x"}
    assert scalar_metrics(metrics) == {"loss": 0.5, "acc": 1.0}


def test_scalar_metrics_reads_nested_metrics_through_the_one_flattener_and_keeps_the_frameworks_step() -> None:
    metrics = {"step": 7, "val": {"loss": torch.tensor(0.25), "names": ["a"]}, "epoch": 1.0}
    assert scalar_metrics(metrics) == {"step": 7.0, "val/loss": 0.25, "epoch": 1.0}


def test_step_log_saves_and_restores_a_named_stateful_object(tmp_path: Path) -> None:
    model, loop = torch.nn.Linear(2, 2), Stateful()
    steps = StepLog(
        Checkpointer.from_env(tmp_path / "model.pt", {"every": 1}, env={}), TrainingState(model=model, loop=loop)
    )
    assert steps.restore() is None and steps.start == 0
    loop.value = 7
    decision = steps.completed(0, {"loss": 1.0})
    assert decision.saved and decision.stop is None
    steps.finish()
    loop.value = 0
    again = StepLog(
        Checkpointer.from_env(tmp_path / "model.pt", {"every": 1}, env={}),
        TrainingState(model=torch.nn.Linear(2, 2), loop=loop),
    )
    resumed = again.restore()
    assert resumed is not None and resumed.step == 0 and again.start == 1 and loop.value == 7
    again.close()


def test_step_log_passes_the_core_stop_decision_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = {"every": 1, "on_divergence": "stop", "divergence_metric": "loss"}
    steps = StepLog(Checkpointer.from_env("model.pt", config, env={}), TrainingState(model=torch.nn.Linear(1, 1)))
    steps.restore()
    assert steps.completed(0, {"loss": 1.0}).stop is None
    decision = steps.completed(1, {"loss": float("nan")})
    assert decision.stop is not None and "diverging" in decision.stop
    steps.close()


def test_step_log_writes_dvclive_at_the_framework_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = TrainingState(model=torch.nn.Linear(1, 1))
    steps = StepLog(Checkpointer.from_env("model.pt", {"every": 1}, env={}), state)
    assert steps.restore() is None
    steps.completed(22, {"loss": torch.tensor(0.25)})
    steps.completed(45, {"loss": torch.tensor(0.125)})
    steps.finish()
    rows = (tmp_path / "dvclive" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert [row.split("\t")[:2] for row in rows[1:]] == [["22", "0.25"], ["45", "0.125"]]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 45
