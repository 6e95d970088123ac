"""The example's own options: ``device`` and ``-v``, each through the real script."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_project, run, train_in_exp_env


@pytest.mark.slow
@pytest.mark.parametrize(
    ("device", "line"),
    [
        ("gpu", "train.py: error: params.yaml key 'device' must be auto, cpu or cuda, got 'gpu'"),
        ("cuda", "train.py: error: params.yaml asks for device: cuda, but torch sees no GPU; use auto or cpu"),
    ],
)
def test_a_bad_device_is_one_line(tmp_path: Path, device: str, line: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: device: cuda is valid here")
    project = make_project(tmp_path / "p", epochs=1, device=device)
    run("python", "download.py", cwd=project)
    proc = run("python", "train.py", cwd=project, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == line
    assert not (project / "model.pt").exists()


@pytest.mark.slow
def test_verbose_logs_every_publishing_phase_in_order(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=1, device="cpu")
    proc = train_in_exp_env(project, "v", "-v")
    phases = [
        line.split(": ", 2)[2].split(" ")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("expckpt: step 0: ")
    ]
    assert phases == [
        "after-temp",
        "after-cache",
        "after-publish",
        "after-commit",
        "after-lock",
        "after-ref",
        "after-note",
    ]


def test_a_learning_rate_dvc_wrote_in_exponent_form_is_read_as_a_number(tmp_path: Path) -> None:
    """`dvc exp run -S lr=1e-5` writes `lr: 1e-05`, which YAML 1.1 (PyYAML) reads as a string."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from train import load_params

    params = make_project(tmp_path / "p", epochs=1) / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.003", "lr: 1e-05"))
    assert load_params(params)["lr"] == 1e-05
    params.write_text(params.read_text().replace("lr: 1e-05", "lr: fast"))
    with pytest.raises(Exception, match=r"params\.yaml key 'lr' must be a number, got 'fast'"):
        load_params(params)
