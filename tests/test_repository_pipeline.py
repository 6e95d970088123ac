"""This repository as a DVC project holds the example pipeline only (the quick start runs here)."""

from __future__ import annotations

import pytest

from conftest import REPO, run


@pytest.mark.slow
def test_the_repository_pipeline_is_the_example_only() -> None:
    """examples/* are projects of their own: as stages here, `dvc exp apply` would fail on their outputs."""
    stages = run("dvc", "stage", "list", "-R", "--name-only", ".", cwd=REPO).stdout.split()
    assert sorted(stages) == ["download", "train"]
