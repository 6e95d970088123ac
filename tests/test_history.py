"""history: a run's metric history as a checkpoint commit holds it (dvclive's TSV files), read as
untrusted input from a real Git repository."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from conftest import run
from expckpt.store.gitstore import GitStore
from expckpt.store.history import live_dir_of, metric_history


def commit(repo: Path, files: dict[str, str], links: dict[str, str] | None = None) -> str:
    """A commit of ``repo`` holding exactly ``files`` (and ``links``: symlink -> target)."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        run("git", "init", "-q", cwd=repo)
    run("git", "rm", "-rqf", "--ignore-unmatch", ".", cwd=repo)
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    for rel, target in (links or {}).items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, repo / rel)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "c", "--allow-empty", cwd=repo)
    return run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()


def tsv(column: str, rows: list[tuple[object, object]]) -> str:
    return "timestamp\tstep\t" + column + "\n" + "".join(f"17000000{i}\t{s}\t{v}\n" for i, (s, v) in enumerate(rows))


@pytest.mark.parametrize(
    ("dvc_yaml", "expected"),
    [
        ("metrics:\n  - logs/metrics.json\n", "logs"),
        ("metrics:\n  - results/live/metrics.json\n", "results/live"),
        ("metrics:\n  - summary.json\n  - out/metrics.json\n", "out"),
        ("stages: {}\n", "dvclive"),  # declares none: dvclive's default
        ("metrics:\n  - ../outside/metrics.json\n", "dvclive"),  # never a path leaving the repository
        ("metrics: [unclosed\n", "dvclive"),  # not YAML
        ("- a list\n", "dvclive"),
        (None, "dvclive"),  # no dvc.yaml at all
    ],
)
def test_the_live_directory_is_the_one_whose_metrics_json_dvc_yaml_declares(
    tmp_path: Path, dvc_yaml: str | None, expected: str
) -> None:
    sha = commit(tmp_path / "r", {"dvc.yaml": dvc_yaml} if dvc_yaml is not None else {"x": "1"})
    assert live_dir_of(GitStore.open(tmp_path / "r"), sha) == expected


def test_history_is_every_logged_step_in_order_with_nested_metric_names(tmp_path: Path) -> None:
    sha = commit(
        tmp_path / "r",
        {
            "dvc.yaml": "metrics:\n  - logs/metrics.json\n",
            "logs/plots/metrics/loss.tsv": tsv("loss", [(0, 0.9), (1, 0.5), (2, "nan")]),
            "logs/plots/metrics/eval/acc.tsv": tsv("acc", [(1, 0.7), (0, 0.6), (2, "inf")]),
            "logs/plots/metrics/notes.txt": "not a metric",
        },
    )
    history = metric_history(GitStore.open(tmp_path / "r"), sha)
    assert [step for step, _ in history] == [0, 1, 2]
    assert history[0][1] == {"loss": 0.9, "eval/acc": 0.6}
    assert history[1][1] == {"loss": 0.5, "eval/acc": 0.7}
    assert math.isnan(history[2][1]["loss"]) and history[2][1]["eval/acc"] == math.inf  # kept: the report reads them


def test_rows_and_files_that_do_not_parse_are_skipped_not_fatal(tmp_path: Path) -> None:
    sha = commit(
        tmp_path / "r",
        {
            "dvclive/plots/metrics/loss.tsv": tsv("loss", [(0, 1.0), ("x", 2.0), (1, "high"), (-1, 3.0), (2, 0.5)])
            + "garbage line\n",
            "dvclive/plots/metrics/acc.tsv": "timestamp\tvalue\n1\t0.5\n",  # no step column
            "dvclive/plots/metrics/f1.tsv": "timestamp\tstep\tprecision\n1\t0\t0.5\n",  # no column of its name
            "dvclive/plots/metrics/empty.tsv": "",
        },
        links={"dvclive/plots/metrics/secret.tsv": "/etc/passwd"},
    )
    assert metric_history(GitStore.open(tmp_path / "r"), sha) == [(0, {"loss": 1.0}), (2, {"loss": 0.5})]


def test_an_explicit_live_dir_wins_and_a_missing_one_is_an_empty_history(tmp_path: Path) -> None:
    sha = commit(tmp_path / "r", {"other/plots/metrics/loss.tsv": tsv("loss", [(3, 0.25)])})
    store = GitStore.open(tmp_path / "r")
    assert metric_history(store, sha, "other") == [(3, {"loss": 0.25})]
    assert metric_history(store, sha) == []  # dvclive/ is not in this commit
