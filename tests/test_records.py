"""Checkpoint commit messages and the record catalog read back from a real Git repository."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run
from expckpt.store.gitstore import GitStore
from expckpt.store.records import (
    BadRecordError,
    CheckpointRecord,
    OutputHash,
    format_message,
    load_records,
    parse_message,
)
from expckpt.store.refs import CheckpointRef

SHA = "0123456789abcdef0123456789abcdef01234567"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
OUTS = {"model.pt": OutputHash(MD5, 1234), "extra/state.bin": OutputHash("a" * 32, 7)}


def roundtrip(metrics, *, parent=None, outs=OUTS, time=1_700_000_000.5, step=3):
    ref = CheckpointRef(SHA, "tut", step)
    message = format_message(ref, parent=parent, outs=outs, metrics=metrics, time=time)
    return message, parse_message(ref, "c" * 40, message)


def test_round_trip() -> None:
    parent = "b" * 40
    _, record = roundtrip({"acc": 0.875, "loss": 0.25, "epoch": 3}, parent=parent)
    assert record == CheckpointRecord(
        ref=CheckpointRef(SHA, "tut", 3),
        commit="c" * 40,
        parent=parent,
        outs=OUTS,
        metrics={"acc": 0.875, "loss": 0.25, "epoch": 3.0},
        time=1_700_000_000.5,
    )
    assert (record.name, record.exp, record.step, record.size) == ("tut@3", "tut", 3, 1241)
    assert all(isinstance(v, float) for v in record.metrics.values())


def test_non_finite_metrics_survive_and_the_line_is_strict_json() -> None:
    message, record = roundtrip({"loss": math.nan, "up": math.inf, "down": -math.inf, "acc": 0.5})
    meta_line = next(line for line in message.splitlines() if line.startswith("expckpt-meta: "))
    # Strict JSON (no bare NaN/Infinity tokens), so any JSON reader can parse it.
    json.loads(meta_line.removeprefix("expckpt-meta: "), parse_constant=pytest.fail)
    assert math.isnan(record.metrics["loss"])
    assert record.metrics["up"] == math.inf and record.metrics["down"] == -math.inf
    assert record.metrics["acc"] == 0.5


def test_message_shape() -> None:
    message, _ = roundtrip({"acc": 1.0})
    lines = message.splitlines()
    assert lines[0] == f"dvc: commit experiment {MD5}"  # the first output's hash, as DVC writes it
    assert lines[1] == "" and "tut@3" in lines[2]
    assert message.endswith("\n") and message.count("expckpt-meta: ") == 1


def test_no_outputs_and_no_parent() -> None:
    message, record = roundtrip({}, outs={}, parent=None, step=0)
    assert message.startswith("dvc: commit experiment " + "0" * 32 + "\n")
    assert record.outs == {} and record.metrics == {} and record.parent is None and record.size == 0


def test_time_is_rounded_to_milliseconds() -> None:
    _, record = roundtrip({}, time=1_700_000_000.123456)
    assert record.time == pytest.approx(1_700_000_000.123, abs=1e-6)


@pytest.mark.parametrize(
    "message",
    [
        "",
        "dvc: commit experiment 0123\n",
        "Initial commit\n\nexpckpt-meta was here\n",
        ' expckpt-meta: {"outs": {}}\n',  # not at the start of a line
    ],
)
def test_foreign_messages_are_not_records(message: str) -> None:
    assert parse_message(CheckpointRef(SHA, "tut", 1), "c" * 40, message) is None


@pytest.mark.parametrize(
    "message",
    [
        "x\n\nexpckpt-meta: not json\n",
        "x\n\nexpckpt-meta: []\n",
        "x\n\nexpckpt-meta: {}\n",
        'x\n\nexpckpt-meta: {"outs": {"model.pt": {"md5": "x"}}}\n',
        'x\n\nexpckpt-meta: {"outs": {"model.pt": {"md5": "x", "size": "big"}}}\n',
        'x\n\nexpckpt-meta: {"outs": [], "metrics": {}}\n',
        'x\n\nexpckpt-meta: {"outs": {}, "metrics": []}\n',
        'x\n\nexpckpt-meta: {"outs": {}, "time": "yesterday"}\n',
    ],
)
def test_damaged_records_are_refused(message: str) -> None:
    """An expckpt-meta line that does not parse is a bad record (skipped with a warning by
    ``load_records``), not a foreign commit."""
    with pytest.raises(BadRecordError):
        parse_message(CheckpointRef(SHA, "tut", 1), "c" * 40, message)


# -- load_records on a real repository ---------------------------------------------------------


def git_repo(path: Path) -> tuple[GitStore, str]:
    path.mkdir()
    run("git", "init", "-q", cwd=path)
    (path / "params.yaml").write_text("lr: 0.1\n")
    run("git", "add", "params.yaml", cwd=path)
    run("git", "commit", "-qm", "baseline", cwd=path)
    head = run("git", "rev-parse", "HEAD", cwd=path).stdout.strip()
    return GitStore.open(path), head


def write_checkpoint(store: GitStore, baseline: str, exp: str, step: int, *, parent=None, acc=0.5) -> str:
    ref = CheckpointRef(baseline, exp, step)
    tree = store.tree_with_files(store.commit_tree(baseline), {"dvc.lock": f"step {step}\n".encode()})
    message = format_message(
        ref, parent=parent, outs={"model.pt": OutputHash(MD5, 10 + step)}, metrics={"acc": acc}, time=100.0 + step
    )
    commit = store.write_commit(tree, [baseline], message)
    store.create_ref(ref.ref, commit)
    return commit


def test_load_records(tmp_path: Path) -> None:
    store, base = git_repo(tmp_path / "repo")
    first = write_checkpoint(store, base, "tut", 0, acc=0.5)
    second = write_checkpoint(store, base, "tut", 1, parent=first, acc=math.nan)
    other = write_checkpoint(store, base, "b-run", 10)
    # Things under refs/exps that are not expckpt checkpoints are skipped:
    plain = store.write_commit(store.commit_tree(base), [base], "dvc: commit experiment 123\n")
    store.create_ref(f"refs/exps/{base[:2]}/{base[2:]}/plain-exp", plain)
    store.create_ref(f"refs/exps/{base[:2]}/{base[2:]}/foreign@4", plain)  # right shape, foreign message
    store.create_ref("refs/exps/exec/EXEC_BASELINE", base)
    store.create_ref(f"refs/exps/{base[:2]}/{base[2:]}/x.@5", plain)  # a valid Git ref, not our name
    store.create_ref("refs/heads/tut@9", second)  # outside refs/exps

    records = load_records(store)
    assert [(r.name, r.commit) for r in records] == [("b-run@10", other), ("tut@0", first), ("tut@1", second)]
    assert records[1].parent is None and records[2].parent == first
    assert records[1].metrics == {"acc": 0.5} and math.isnan(records[2].metrics["acc"])
    assert records[2].outs == {"model.pt": OutputHash(MD5, 11)} and records[2].time == 101.0
    assert store.read_file(records[2].commit, "dvc.lock") == b"step 1\n"


def test_load_records_filters_and_sorts_by_baseline(tmp_path: Path) -> None:
    store, base = git_repo(tmp_path / "repo")
    run("git", "commit", "-q", "--allow-empty", "-m", "second baseline", cwd=tmp_path / "repo")
    base2 = store.get_ref("HEAD")
    assert base2 and base2 != base
    for step in (10, 2):  # written out of order: sorted by step, numerically
        write_checkpoint(store, base, "tut", step)
    write_checkpoint(store, base2, "tut", 0)

    assert [(r.ref.baseline, r.step) for r in load_records(store, [base])] == [(base, 2), (base, 10)]
    assert [(r.ref.baseline, r.step) for r in load_records(store, [base2])] == [(base2, 0)]
    assert load_records(store, []) == []
    expected_all = sorted([(base, 2), (base, 10), (base2, 0)])
    assert [(r.ref.baseline, r.step) for r in load_records(store)] == expected_all


def test_load_records_of_empty_repo(tmp_path: Path) -> None:
    store, _ = git_repo(tmp_path / "repo")
    assert load_records(store) == []
