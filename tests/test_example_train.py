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
    phases = [line.split(": ", 2)[2].split(" ")[0] for line in proc.stderr.splitlines() if line.startswith("expckpt: step 0: ")]
    assert phases == ["after-temp", "after-cache", "after-publish", "after-commit", "after-lock", "after-ref", "after-note"]
