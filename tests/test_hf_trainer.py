"""The Hugging Face Trainer as its users drive it (issue 23), in this process on a real Git + DVC repo.

A Trainer with the settings HF users reach for first (``save_steps``, ``save_total_limit=2``,
``load_best_model_at_end``, ``metric_for_best_model="accuracy"``, ``eval_strategy="steps"``) and
the expckpt callback, no ``checkpoint:`` section. The evaluation accuracy is scripted by global
step (best at step 4) so that which checkpoint is best is known.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from conftest import run
from expckpt.store.cache import DvcCache
from expckpt.store.catalog import Catalog
from expckpt.serialize.checkpoint_file import load_checkpoint
from expckpt.cli.main import main
from expckpt.policy.config import CheckpointConfig
from expckpt.store.gitstore import GitStore
from inprocess import dvc_env, new_repo, refs

transformers = pytest.importorskip("transformers")

from expckpt.integrations.hf import ExpCkptTrainerCallback, ResumeMismatch  # noqa: E402

ACCURACY = {2: 0.5, 4: 0.9, 6: 0.6, 8: 0.7, 10: 0.65, 12: 0.6}  # best at step 4
STEPS = 12


class Points(Dataset):
    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Killed(BaseException):
    """Stands for a kill -9 right after a checkpoint was published."""


class KillAt(transformers.TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise Killed(self.step)


def train(
    project: Path,
    exp: str,
    *,
    resume: Any = "callback",
    steps: int = STEPS,
    kill_at: int | None = None,
    **extra: Any,
) -> tuple[Any, ExpCkptTrainerCallback]:
    """One ``dvc exp run -n <exp>`` of the Trainer script, in this process (killed after ``kill_at``)."""
    holder: dict[str, Any] = {}

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": ACCURACY[holder["trainer"].state.global_step]}

    with pytest.MonkeyPatch.context() as mp:
        for key, value in dvc_env(project, exp).items():
            mp.setenv(key, value)
        torch.manual_seed(7)
        args = transformers.TrainingArguments(
            output_dir="hf-out",
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=0.1,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            logging_steps=2,
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model="accuracy",
            seed=7,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            **extra,
        )
        callback = ExpCkptTrainerCallback("model.pt")
        trainer = transformers.Trainer(
            model=Tiny(),
            args=args,
            train_dataset=Points(),
            eval_dataset=Points(12),
            compute_metrics=accuracy,
            callbacks=[callback, *([KillAt(kill_at)] if kill_at else [])],
        )
        holder["trainer"] = trainer
        trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint if resume == "callback" else resume)
    return trainer, callback


@pytest.fixture
def project(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    p = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(p)
    (p / ".gitignore").write_text("/model.pt\n/hf-out\n")
    yield p


def _store(p: Path) -> tuple[GitStore, DvcCache]:
    store = GitStore.open(p)
    return store, DvcCache.for_project(p, store.git_dir)


def _weights(p: Path, name: str) -> dict[str, torch.Tensor]:
    store, cache = _store(p)
    record = Catalog.load(store).resolve(name)
    return load_checkpoint(cache.object_path(record.outs["model.pt"].md5))["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_retention_and_monitor_from_training_args_are_recorded(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(project, "a")
    assert sorted(refs(project)) == ["a@10", "a@12", "a@4"]  # save_total_limit 2 + the best
    records = Catalog.load(GitStore.open(project)).records
    assert {r.settings for r in records} == {
        CheckpointConfig.from_params(
            {"every": 1, "keep_last": 2, "keep_best": 1, "monitor": "eval_accuracy", "mode": "max"}
        )
    }
    capsys.readouterr()
    assert main(["list", "a", "--json"]) == 0
    kept = {r["name"]: r["kept_by"] for r in json.loads(capsys.readouterr().out)}
    assert kept["a@4"] == ["best"]
    assert main(["report", "a"]) == 0
    out = capsys.readouterr().out
    assert "best eval_accuracy 0.9 at step 4" in out and "dvc exp apply a@4" in out


def test_retention_after_a_kill_and_resume_keeps_what_an_uninterrupted_run_keeps(project: Path) -> None:
    with pytest.raises(Killed):
        train(project, "killed", kill_at=6)
    assert sorted(refs(project)) == ["killed@4", "killed@6"]
    train(project, "resumed")
    assert sorted(refs(project)) == ["killed@4", "resumed@10", "resumed@12"]  # as uninterrupted: 4 (best), 10, 12


def test_timings_are_not_metrics(project: Path) -> None:
    train(project, "a", steps=4)
    for record in Catalog.load(GitStore.open(project)).records:
        assert {"eval_accuracy", "eval_loss", "loss"} <= record.metrics.keys()
        timing = [m for m in record.metrics if m.endswith(("_runtime", "_per_second")) or m == "total_flos"]
        assert timing == [], record.name
    logged = json.loads((project / "dvclive" / "metrics.json").read_text())
    assert "eval_runtime" not in logged and "eval_samples_per_second" not in logged


def test_model_pt_holds_the_best_and_the_last_line_says_so(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer, _ = train(project, "a")
    out = capsys.readouterr().out
    store, cache = _store(project)
    best = Catalog.load(store).resolve("a@4")
    assert (project / "model.pt").read_bytes() == cache.object_path(best.outs["model.pt"].md5).read_bytes()
    assert _same({f"net.{k}": v for k, v in trainer.model.net.state_dict().items()}, _weights(project, "a@4"))
    last = [line for line in out.splitlines() if line.startswith("expckpt:")][-1]
    assert last == (
        "expckpt: model.pt holds the best checkpoint, a@4 (eval_accuracy 0.9), as the Trainer's final model"
        " (load_best_model_at_end); the last is a@12: dvc exp apply a@12 to continue from it"
    )


def test_the_best_model_comes_from_expckpt_after_apply(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(project, "a")
    shutil.rmtree(project / "hf-out", ignore_errors=True)  # a fresh clone, a --temp run: HF's folders are not there
    run("dvc", "exp", "apply", "a@10", cwd=project)
    capsys.readouterr()
    trainer, _ = train(project, "b")
    out = capsys.readouterr().out
    assert sorted(r for r in refs(project) if r.startswith("b@")) == ["b@12"]
    assert _same({f"net.{k}": v for k, v in trainer.model.net.state_dict().items()}, _weights(project, "a@4"))
    assert "expckpt: model.pt holds the best checkpoint, a@4" in out
    assert "Resuming from model.pt (a@10): 10 steps done" in out  # global step 10 = 10 steps done


def test_stale_trainer_folders_are_removed_and_spare_copies_not_kept(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = project / "hf-out" / "checkpoint-240"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text('{"global_step": 240}')
    train(project, "a", steps=6)
    out = capsys.readouterr().out
    assert "expckpt: removed 1 Trainer folder(s) an earlier run left in hf-out (checkpoint-240)" in out
    assert list((project / "hf-out").glob("checkpoint-*")) == []  # published: expckpt holds the copies


def test_resume_from_checkpoint_true_resumes_where_expckpt_did(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(project, "a")
    for name, folder in (("a@12", "checkpoint-12"), ("a@4", "checkpoint-240")):  # another experiment's folders
        shutil.copytree(_resume_folder_of(project, name), project / "hf-out" / folder)
    run("dvc", "exp", "apply", "a@10", cwd=project)
    capsys.readouterr()
    train(project, "b", resume=True)  # the HF habit: the newest checkpoint-* folder in output_dir
    out = capsys.readouterr().out
    assert "removed 2 Trainer folder(s) an earlier run left in hf-out (checkpoint-12, checkpoint-240)" in out
    assert "Resuming from model.pt (a@10): 10 steps done" in out
    assert sorted(r for r in refs(project) if r.startswith("b@")) == ["b@12"]
    assert _same(_weights(project, "b@12"), _weights(project, "a@12"))  # steps 11 and 12 trained again


def test_the_kept_best_folder_holds_only_the_model(project: Path) -> None:
    with pytest.raises(Killed):
        train(project, "a", kill_at=6)
    assert [p.name for p in (project / "hf-out").iterdir()] == ["checkpoint-4"]  # the best, for the end
    assert sorted(p.name for p in (project / "hf-out" / "checkpoint-4").iterdir()) == ["model.safetensors"]


def test_reset_removes_the_trainer_folders_a_killed_run_left(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Killed):
        train(project, "a", kill_at=6)
    (project / "hf-out" / "notes.txt").write_text("mine\n")
    (project / "hf-out" / "checkpoint-notes").mkdir()
    capsys.readouterr()
    assert main(["reset"]) == 0
    assert "Removed hf-out/checkpoint-4" in capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in (project / "hf-out").iterdir()) == ["checkpoint-notes", "notes.txt"]


def test_a_trainer_resuming_elsewhere_stops_with_one_line(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(project, "a", steps=6)
    run("dvc", "exp", "apply", "a@4", cwd=project)
    other = tmp_path / "elsewhere" / "checkpoint-6"
    shutil.copytree(_resume_folder_of(project, "a@6"), other)
    capsys.readouterr()
    with pytest.raises(ResumeMismatch) as caught:
        train(project, "b", resume=str(other))
    assert caught.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "expckpt: error: the Trainer resumed at global step 6 but expckpt restored model.pt at step 4 (a@4);"
        " call trainer.train(resume_from_checkpoint=<callback>.resume_from_checkpoint), not True or a path,"
        " and keep hf-out to one experiment at a time"
    )
    assert not [r for r in refs(project) if r.startswith("b@")]


def test_save_only_model_says_the_resume_will_not_be_exact(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(project, "a", steps=2, save_only_model=True)
    assert (
        "expckpt: warning: save_only_model=True: the Trainer saves no optimizer, scheduler or RNG state, so"
        " neither do expckpt's checkpoints and a resume starts them afresh (not exact); leave save_only_model"
        " unset for an exact resume"
    ) in capsys.readouterr().err.splitlines()
    payload = load_checkpoint(_object(project, "a@2"))
    assert sorted(payload["hf"]) == ["trainer_state.json"]  # no optimizer.pt, scheduler.pt, rng_state.pth


def _resume_folder_of(project: Path, name: str) -> Path:
    """A Trainer checkpoint folder of checkpoint ``name``, as the Trainer wrote it."""
    from expckpt.integrations.hf import TrainerFiles

    files = TrainerFiles()
    payload = load_checkpoint(_object(project, name))
    files.load_state_dict(payload.get("hf") or payload["scaler"])
    folder = project.parent / f"folder-{name}"
    model = Tiny()
    model.load_state_dict(_weights(project, name))
    files.write(folder, model)
    return folder


def _object(project: Path, name: str) -> Path:
    store, cache = _store(project)
    return cache.object_path(Catalog.load(store).resolve(name).outs["model.pt"].md5)
