"""The HF Trainer adapter pauses at the next optimizer step (issue 24, B), in process: a tiny
Trainer inside the variables ``dvc exp run`` sets, a real repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

transformers = pytest.importorskip("transformers")

from expckpt.integrations.hf import ExpCkptTrainerCallback  # noqa: E402
from expckpt.train.pause import TrainingPaused, request_stop  # noqa: E402
from inprocess import dvc_env, new_repo  # noqa: E402
from oracle import git  # noqa: E402


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"logits": logits, **({"loss": F.cross_entropy(logits, labels)} if labels is not None else {})}


class Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class StopAt(transformers.TrainerCallback):
    def __init__(self, project: Path, step: int) -> None:
        self.project, self.step = project, step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            request_stop(self.project, "hf")


def fit(project: Path, exp: str, monkeypatch: pytest.MonkeyPatch, *extra: object) -> ExpCkptTrainerCallback:
    monkeypatch.chdir(project)
    for key, value in dvc_env(project, exp).items():
        monkeypatch.setenv(key, value)
    args = transformers.TrainingArguments(
        output_dir=str(project / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=16,
        save_strategy="epoch",
        logging_strategy="epoch",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    callback = ExpCkptTrainerCallback("model.pt", {"every": 1, "keep_last": None})
    torch.manual_seed(0)
    trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[callback, *extra])
    trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)
    return callback


def weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "model.pt", weights_only=True)["model"]


@pytest.mark.slow  # the Trainer, three times (about 30 s)
def test_expckpt_stop_saves_at_the_next_trainer_step_and_exits_75(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    with pytest.raises(TrainingPaused) as paused:
        fit(project, "hf", monkeypatch, StopAt(project, 2))

    assert paused.value.code == 75
    names = git(project, "for-each-ref", "--format=%(refname:lstrip=-1) %(objectname)", "refs/exps").split("\n")
    found = dict(line.split() for line in names if "@" in line)
    assert sorted(found) == ["hf@3"], "stopped after step 2: saved at step 3, the next, mid-epoch (4 steps an epoch)"
    message = git(project, "show", "-s", "--format=%B", found["hf@3"])
    assert json.loads(message.split("expckpt-meta: ")[1])["paused"] is True

    resumed = fit(project, "more", monkeypatch)  # `dvc exp run` after the pause: mid-epoch, by the Trainer
    assert resumed.resumed is not None and resumed.resumed.record.name == "hf@3"
    reference = new_repo(tmp_path_factory, tmp_path / "reference")
    fit(reference, "ref", monkeypatch)
    ours, theirs = weights(project), weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "the paused and resumed run ends where one run ends"
