"""Each checkpoint records its run's checkpoint settings; ``list``, ``report`` and ``gc`` use them.

Issue 22.3: a run with ``monitor: test_loss, mode: min`` was reported by the workspace's
params.yaml (changed back since) as "best acc ... at step 5", naming a checkpoint retention had
removed. Issue 23.4: the retention and monitor a Hugging Face Trainer derived were forgotten by
the CLI, and ``--metric accuracy`` (HF's spelling of ``eval_accuracy``) silently matched nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expckpt.cli.main import main
from expckpt.policy.config import CheckpointConfig
from expckpt.store.records import BadRecordError, format_message, parse_message
from expckpt.store.refs import CheckpointRef
from inprocess import checkpointer, new_repo, new_state, refs

SHA = "0123456789abcdef0123456789abcdef01234567"
RUN = {"every": 1, "keep_last": 1, "keep_best": 1, "monitor": "test_loss", "mode": "min"}
TEST_LOSS = [0.9, 0.5, 0.3, 0.6, 0.7, 0.8]  # best (min) at step 2
ACCURACY = [0.1, 0.2, 0.3, 0.4, 0.95, 0.5]  # best (max) at step 4: what params.yaml says now
WORKSPACE_PARAMS = "lr: 0.1\ncheckpoint:\n  keep_last: 10\n  keep_best: 1\n  monitor: eval_accuracy\n  mode: max\n"


def _message(settings: object) -> str:
    ref = CheckpointRef(SHA, "tut", 3)
    meta = json.loads(
        format_message(ref, parent=None, outs={}, metrics={}, time=1.0).splitlines()[-1].split(": ", 1)[1]
    )
    meta["settings"] = settings
    return f"dvc: commit experiment x\n\nexpckpt-meta: {json.dumps(meta)}\n"


def test_settings_round_trip_through_the_meta_line() -> None:
    config = CheckpointConfig.from_params(RUN)
    ref = CheckpointRef(SHA, "tut", 3)
    message = format_message(ref, parent=None, outs={}, metrics={}, time=1.0, settings=config.recorded())
    record = parse_message(ref, "c" * 40, message)
    assert record is not None and record.settings == config
    assert (record.settings.monitor, record.settings.mode, record.settings.keep_last) == ("test_loss", "min", 1)
    old = parse_message(ref, "c" * 40, format_message(ref, parent=None, outs={}, metrics={}, time=1.0))
    assert old is not None and old.settings is None  # written before settings were recorded


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ([1], "settings [1] is not an object"),
        ({"keep_last": 1, "shell": "rm -rf /"}, "settings key 'shell' is not one of"),
        ({"mode": "sideways"}, "settings are not valid"),
        ({"keep_last": 0}, "settings are not valid"),
        ({"monitor": "acc\x1b[2J"}, "settings monitor"),
        ({"keep_best": 1}, "settings are not valid"),  # keep_best without a monitor
    ],
)
def test_bad_settings_are_refused_like_every_other_field(settings: object, why: str) -> None:
    with pytest.raises(BadRecordError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_message(CheckpointRef(SHA, "tut", 3), "c" * 40, _message(settings))


@pytest.fixture
def ran(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Experiment ``lossy`` trained 6 steps with RUN, then params.yaml changed back (22.3)."""
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    state = new_state()
    ckpt = checkpointer(project, "lossy", RUN)
    ckpt.restore(state)
    for step in range(6):
        ckpt.save(state, step, {"test_loss": TEST_LOSS[step], "eval_accuracy": ACCURACY[step]})
    ckpt.close(state)
    assert sorted(refs(project)) == ["lossy@2", "lossy@5"]  # the run's keep_best by test_loss + last
    (project / "params.yaml").write_text(WORKSPACE_PARAMS)
    return project


def test_each_checkpoint_records_the_effective_settings(ran: Path) -> None:
    from expckpt.store.catalog import Catalog
    from expckpt.store.gitstore import GitStore

    records = Catalog.load(GitStore.open(ran)).records
    assert [r.settings for r in records] == [CheckpointConfig.from_params(RUN)] * 2


def test_report_ranks_by_the_experiments_own_settings(ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "lossy"]) == 0
    out = capsys.readouterr().out
    assert "best test_loss 0.3 at step 2" in out, out
    assert "checkpoint to apply: dvc exp apply lossy@2" in out
    assert "eval_accuracy" not in out
    assert main(["report", "lossy", "--metric", "eval_accuracy", "--mode", "max"]) == 0  # explicit flags win
    out = capsys.readouterr().out
    assert "best eval_accuracy 0.5 at step 5" in out  # of the kept checkpoints' metrics (no dvclive files here)


def test_report_names_the_logged_metric_for_hf_spelling(ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "lossy", "--metric", "accuracy"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "expckpt: error: experiment 'lossy' logged no metric 'accuracy' (it logged: eval_accuracy, "
        "test_loss); did you mean --metric eval_accuracy?"
    )


def test_list_shows_what_the_runs_own_retention_keeps(ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "lossy", "--json"]) == 0
    rows = {r["name"]: r["kept_by"] for r in json.loads(capsys.readouterr().out)}
    assert rows == {"lossy@2": ["best"], "lossy@5": ["last", "newest"]}


def test_gc_keeps_each_experiments_recorded_best(ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--workspace", "--keep-last", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lossy@2" not in out, out  # the recorded keep_best 1 by test_loss (min) still keeps it
    assert main(["gc", "--workspace", "--keep-last", "1", "--keep-best", "1", "--metric", "accuracy", "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "Would remove" not in captured.out
    assert "logged no metric 'accuracy'" in captured.err and "did you mean --metric eval_accuracy?" in captured.err
    assert (
        main(
            [
                "gc",
                "--workspace",
                "--keep-last",
                "1",
                "--keep-best",
                "1",
                "--metric",
                "eval_accuracy",
                "--mode",
                "max",
                "--dry-run",
            ]
        )
        == 0
    )
    assert "Would remove checkpoint lossy@2" in capsys.readouterr().out  # explicit flags win


def test_show_names_the_branch_point_after_retention_removed_the_runs_first_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from inprocess import train

    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    train(project, "k", 4, config={"keep_last": None})
    train(project, "k2", 8, config={"keep_last": 1})  # resumes from k@3; k2@4, its first, is dropped
    assert sorted(refs(project)) == ["k2@7", "k@0", "k@1", "k@2", "k@3"]
    capsys.readouterr()
    assert main(["show", "--json"]) == 0
    chains = {c["experiment"]: c for c in json.loads(capsys.readouterr().out)}
    assert chains["k2"]["resumed_from"] == {"commit": refs(project)["k@3"], "name": "k@3"}
    assert main(["show"]) == 0
    assert f"({refs(project)['k@3'][:7]} k@3)" in capsys.readouterr().out


@pytest.mark.parametrize("origin", ["zz", 7, "A" * 40])
def test_a_bad_origin_is_refused(origin: object) -> None:
    ref = CheckpointRef(SHA, "tut", 3)
    meta = json.loads(
        format_message(ref, parent=None, outs={}, metrics={}, time=1.0).splitlines()[-1].split(": ", 1)[1]
    )
    meta["origin"] = origin
    with pytest.raises(BadRecordError, match=r"origin .* is not a 40-hex commit id"):
        parse_message(ref, "c" * 40, f"dvc: commit experiment x\n\nexpckpt-meta: {json.dumps(meta)}\n")
