"""``expckpt reset`` and the Git index: what it deletes is never left staged.

dvclive ``git add``s its files when training ends inside ``dvc exp run``. DVC resets the index
when the run ends, but a run whose shell died of the signal that paused training (``SHELL=/bin/sh``
is dash, which does not exec the stage's command) has already ended: dvclive's files stay
staged. Deleted by ``expckpt reset`` while staged, they made DVC's next run fail with "Stash apply
resulted in merge conflicts: 4 uncommitted changes exist in the index".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run
from expckpt.cli.main import main


def _dvclive_staged_as_at_the_end_of_a_run(project: Path) -> None:
    plots = project / "dvclive" / "plots" / "metrics"
    plots.mkdir(parents=True)
    (project / "dvclive" / "metrics.json").write_text('{"step": 2, "acc": 0.5}\n')
    (plots / "acc.tsv").write_text("step\tacc\n2\t0.5\n")
    (project / "model.pt").write_bytes(b"not read")
    run("git", "add", "dvclive", cwd=project)


def _staged(project: Path) -> str:
    return run("git", "diff", "--cached", "--name-status", cwd=project).stdout


def test_reset_unstages_the_files_it_deletes(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dvclive_staged_as_at_the_end_of_a_run(project)
    assert "dvclive/metrics.json" in _staged(project)
    monkeypatch.chdir(project)

    assert main(["reset"]) == 0

    assert not (project / "dvclive").exists() and not (project / "model.pt").exists()
    assert _staged(project) == ""


def test_reset_leaves_the_users_own_staged_files_and_tracked_deletions_unstaged(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dvclive folder the user commits: its deletion is a change in the worktree, not the index;
    a file the user staged elsewhere stays staged."""
    (project / "dvclive").mkdir()
    (project / "dvclive" / "metrics.json").write_text('{"acc": 0.1}\n')
    run("git", "add", "dvclive", cwd=project)
    run("git", "commit", "-qm", "track dvclive", cwd=project)
    (project / "notes.md").write_text("mine\n")
    run("git", "add", "notes.md", cwd=project)
    monkeypatch.chdir(project)

    assert main(["reset"]) == 0

    assert _staged(project) == "A\tnotes.md\n"
    assert run("git", "status", "--porcelain", "--", "dvclive", cwd=project).stdout == " D dvclive/metrics.json\n"


@pytest.mark.slow
def test_the_next_dvc_exp_run_after_a_reset_of_staged_dvclive_files_runs(project: Path) -> None:
    _dvclive_staged_as_at_the_end_of_a_run(project)
    run("expckpt", "reset", cwd=project)

    result = run("dvc", "exp", "run", "-n", "after", "-S", "epochs=1", cwd=project, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stash apply" not in result.stderr
