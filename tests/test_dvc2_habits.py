"""DVC 2 habits on DVC 3 (issue #14.9): what the README's command map says, through the real CLIs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import REPO, make_project, run

pytestmark = pytest.mark.slow


def exp_refs(project: Path) -> list[str]:
    out = run("git", "for-each-ref", "--format=%(refname:lstrip=4)", "refs/exps", cwd=project).stdout
    return sorted(name for name in out.split() if not name.startswith("exec"))


def test_removing_an_experiment_with_its_checkpoints_as_the_readme_says(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=2)
    run("dvc", "exp", "run", "-n", "tut", cwd=project)
    assert exp_refs(project) == ["tut", "tut@0", "tut@1"]

    run("dvc", "exp", "remove", "tut", cwd=project)  # DVC 3 removes only the ref named tut
    assert exp_refs(project) == ["tut@0", "tut@1"]

    names = run("expckpt", "list", "tut", "--names", cwd=project).stdout.split()
    assert names == ["tut@0", "tut@1"]
    run("dvc", "exp", "remove", *names, cwd=project)  # dvc exp remove tut $(expckpt list tut --names)
    assert exp_refs(project) == []


def test_the_readme_maps_dvc2_commands_dvc3_refuses() -> None:
    readme = (REPO / "README.md").read_text()
    for dvc2, dvc3 in [
        ("`dvc exp run --reset`", "`expckpt reset && dvc exp run`"),
        ("`dvc exp gc -w`", "`expckpt gc -w`"),
    ]:
        row = next((line for line in readme.splitlines() if line.startswith(f"| {dvc2} |")), None)
        assert row is not None and dvc3 in row, dvc2
    for args in (["dvc", "exp", "run", "--reset"], ["dvc", "exp", "gc", "-w"]):
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode != 0, f"{' '.join(args)} works again: update the README's map"
