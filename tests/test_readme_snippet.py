"""The README's own-script snippet (DVC's tutorial, ported) works as the README says.

The script is read from the README itself, so the documented snippet is the tested one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_project, run

pytestmark = pytest.mark.slow


def snippet() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- snippet:own-script -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no own-script snippet"
    return match.group(1)


def ported(path: Path, **params: object) -> Path:
    project = make_project(path, checkpoint={"every": 1, "keep_last": 10}, **params)
    (project / "train.py").write_text(snippet())
    run("git", "commit", "-qam", "port the tutorial", cwd=project)
    return project


def weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "model.pt", weights_only=True)["model"]


def test_the_readme_snippet_checkpoints_resumes_exactly_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    project = ported(tmp_path / "resumed", epochs=2)
    first = run("dvc", "exp", "run", "-n", "a", cwd=project)
    assert "Checkpoint experiment 'a@0'" in first.stdout and "Checkpoint experiment 'a@1'" in first.stdout

    second = run("dvc", "exp", "run", "-n", "b", "-S", "epochs=4", cwd=project)
    assert "Resuming from model.pt (a@1): 2 steps done" in second.stdout
    assert "Checkpoint experiment 'b@3'" in second.stdout

    straight = ported(tmp_path / "straight", epochs=4)
    run("dvc", "exp", "run", "-n", "s", cwd=straight)
    ours, theirs = weights(project), weights(straight)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    again = run("dvc", "exp", "run", "-n", "c", cwd=project)  # exits 0: nothing left to train
    assert "model.pt already has 4 steps (total 4); nothing to train" in again.stdout

    (project / "model.pt").unlink()
    (project / "model.pt").write_bytes(b"not a checkpoint")
    broken = run("python", "train.py", cwd=project, check=False)
    assert broken.returncode == 1
    assert broken.stderr.count("\n") == 1 and broken.stderr.startswith("train.py: error: ")
    assert "is truncated or corrupt" in broken.stderr
