"""Exact resume (issue: the example pipeline): stopping and resuming changes nothing.

Training E epochs straight and training k epochs, stopping, then going on to E must give
bitwise-identical weights and identical metrics, through the real ``dvc exp run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_project, run
from expckpt import load_checkpoint

pytestmark = pytest.mark.slow


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def optimizer_state(path: Path) -> dict:
    return load_checkpoint(path)["optimizer"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"
    oa, ob = optimizer_state(a)["state"], optimizer_state(b)["state"]
    for index in oa:
        for name, value in oa[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob[index][name])), f"Adam {name} differs"


def metric_history(project: Path) -> dict[str, list[tuple[str, str]]]:
    """dvclive's per-step values (timestamps dropped: they differ by nature)."""
    history = {}
    for tsv in sorted((project / "dvclive" / "plots" / "metrics").glob("*.tsv")):
        lines = tsv.read_text().splitlines()
        header = lines[0].split("\t")
        keep = [i for i, h in enumerate(header) if h != "timestamp"]
        history[tsv.stem] = [tuple(line.split("\t")[i] for i in keep) for line in lines[1:]]
    return history


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("straight") / "p", epochs=4)
    run("dvc", "exp", "run", "-n", "straight", cwd=project)
    return project


@pytest.mark.parametrize("k", [1, 2])
def test_stop_after_k_epochs_then_resume_matches_straight_run(straight: Path, tmp_path: Path, k: int) -> None:
    project = make_project(tmp_path / "p", epochs=4)
    first = run("dvc", "exp", "run", "-n", "part", "-S", f"epochs={k}", cwd=project)
    assert f"Checkpoint experiment 'part@{k - 1}'" in first.stdout

    second = run("dvc", "exp", "run", "-n", "rest", "-S", "epochs=4", cwd=project)

    assert f"{k} steps done" in second.stdout
    assert f"epoch {k - 1}:" not in second.stdout, "a finished epoch was trained again"
    assert f"Checkpoint experiment 'rest@{k}'" in second.stdout
    assert_same_weights(project / "model.pt", straight / "model.pt")
    assert json.loads((project / "dvclive/metrics.json").read_text()) == json.loads(
        (straight / "dvclive/metrics.json").read_text()
    )
    assert metric_history(project) == metric_history(straight)


def test_finished_run_says_so_and_exits_0(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=2)
    run("dvc", "exp", "run", "-n", "two", cwd=project)
    before = (project / "model.pt").read_bytes()

    again = run("dvc", "exp", "run", "-n", "again", cwd=project)

    assert "already has 2 steps (total 2); nothing to train" in again.stdout
    assert (project / "model.pt").read_bytes() == before


def test_python_train_py_outside_dvc_saves_and_resumes(tmp_path: Path) -> None:
    straight = make_project(tmp_path / "straight", epochs=3)
    run("python", "download.py", cwd=straight)
    run("python", "train.py", cwd=straight)

    project = make_project(tmp_path / "p", epochs=1)
    run("python", "download.py", cwd=project)
    first = run("python", "train.py", cwd=project)
    assert "epoch 0:" in first.stdout and (project / "model.pt").is_file()
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 1", "epochs: 3"))

    resumed = run("python", "train.py", cwd=project)

    assert "1 steps done" in resumed.stdout
    assert "epoch 0:" not in resumed.stdout and "epoch 2:" in resumed.stdout
    assert_same_weights(project / "model.pt", straight / "model.pt")
    assert run("git", "for-each-ref", "refs/exps", cwd=project).stdout == "", "no refs outside dvc exp run"


def test_missing_params_key_is_one_clear_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=1)
    params = project / "params.yaml"
    params.write_text("\n".join(line for line in params.read_text().splitlines() if not line.startswith("lr:")))

    result = run("python", "train.py", cwd=project, check=False)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "train.py: error: params.yaml has no key 'lr'; add it at the top level (e.g. `lr: ...`)"
    ]
