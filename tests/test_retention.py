"""Checkpoint strategies during training: retention, Keras-style lines, bad values, stopping."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import make_project, run, train_in_exp_env
from expckpt.cache import DvcCache
from expckpt.catalog import Catalog
from expckpt.gitstore import GitStore


def records(project: Path, exp: str) -> list:
    return [r for r in Catalog.load(GitStore.open(project)).records if r.exp == exp]


@pytest.mark.slow
def test_twelve_epochs_keep_last_3_keep_best_1_then_gc_frees_the_rest(tmp_path: Path) -> None:
    # Ranking by *highest* loss puts the best checkpoint at step 0, far from the newest three,
    # so the test sees the union of both rules rather than two rules that agree.
    policy = {"keep_last": 3, "keep_best": 1, "monitor": "loss", "mode": "max"}
    project = make_project(tmp_path / "p", epochs=12, checkpoint=policy)

    result = run("dvc", "exp", "run", "-n", "long", cwd=project)

    for step in range(12):
        assert f"Checkpoint experiment 'long@{step}'" in result.stdout
    assert "step 0: loss improved from -inf to" in result.stdout
    assert "step 1: loss did not improve from" in result.stdout
    survivors = sorted(r.step for r in records(project, "long"))
    assert survivors == [0, 9, 10, 11]

    cache = DvcCache.for_project(project, project / ".git")
    written = cache.written_objects()
    assert len([m for m in written if cache.has(m)]) == 12, "evicted refs' objects stay until gc"

    gc = run("expckpt", "gc", "--workspace", "--force", cwd=project)

    kept_objects = {o.md5 for r in records(project, "long") for o in r.outs.values()}
    assert {m for m in written if cache.has(m)} == kept_objects
    assert "Removed 0 checkpoints" in gc.stdout and "freed" in gc.stdout
    assert run("expckpt", "verify", cwd=project).returncode == 0
    listing = json.loads(run("expckpt", "list", "long", "--json", cwd=project).stdout)
    assert {c["name"]: c["kept_by"] for c in listing} == {
        "long@0": ["best"],
        "long@9": ["last"],
        "long@10": ["last"],
        "long@11": ["last", "newest"],
    }


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ({"keep_last": 0}, "checkpoint.keep_last"),
        ({"mode": "up", "monitor": "acc"}, "checkpoint.mode"),
        ({"keep_best": 1, "monitor": "accuracy"}, "checkpoint.monitor is 'accuracy', which this run does not log"),
        ({"evry": 2}, "checkpoint.evry"),
    ],
)
def test_bad_checkpoint_settings_get_one_line_naming_the_key(tmp_path: Path, checkpoint: dict, message: str) -> None:
    project = make_project(tmp_path / "p", epochs=1, checkpoint=checkpoint)

    result = train_in_exp_env(project, "bad", check=False)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and message in lines[0]
    assert records(project, "bad") == [] and not (project / "model.pt").exists()


def test_every_n_steps_and_the_last_step_is_always_saved(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=5, checkpoint={"every": 2, "keep_last": None})

    train_in_exp_env(project, "sparse")

    assert sorted(r.step for r in records(project, "sparse")) == [1, 3, 4]


def test_every_zero_turns_checkpoints_off_but_writes_the_model(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=2, checkpoint={"every": 0})

    train_in_exp_env(project, "off")

    assert records(project, "off") == []
    assert (project / "model.pt").is_file()


def test_divergence_stops_cleanly_after_keeping_the_checkpoint(tmp_path: Path) -> None:
    project = make_project(
        tmp_path / "p",
        epochs=12,
        lr=3.0,  # far too high: the loss blows up
        checkpoint={"keep_last": None, "on_divergence": "stop", "divergence_steps": 2, "monitor": "acc"},
    )

    result = train_in_exp_env(project, "boom")

    assert result.returncode == 0
    assert "expckpt: stopping training at step" in result.stdout
    stopped_at = int(result.stdout.split("stopping training at step ")[1].split()[0])
    assert stopped_at < 11
    assert max(r.step for r in records(project, "boom")) == stopped_at
    report = run("expckpt", "report", "boom", cwd=project)
    assert "diverging" in report.stdout or "NaN" in report.stdout
    assert "checkpoint to apply: dvc exp apply boom@" in report.stdout


# --------------------------------------------------------------------------- freeing during training (#14.6)


def test_free_dropped_frees_what_retention_dropped_unless_something_else_needs_it(tmp_path: Path) -> None:
    from expckpt.gc import free_dropped

    project = make_project(tmp_path / "p", epochs=4, checkpoint={"keep_last": None})
    train_in_exp_env(project, "run")
    steps = records(project, "run")
    store = GitStore.open(project)
    cache = DvcCache.for_project(project, store.git_dir)
    md5 = [next(iter(r.outs.values())).md5 for r in steps]
    # step 1 lives on as a branch; step 0's weights were exported and tracked with `dvc add`
    run("dvc", "exp", "branch", "run@1", "promising", cwd=project)
    (project / "exported.pt").write_bytes(cache.object_path(md5[0]).read_bytes())
    run("dvc", "add", "-q", "exported.pt", cwd=project)

    for record in steps[:3]:  # what retention does after the newest checkpoint: drop the refs ...
        assert store.delete_ref(record.ref.ref, record.commit)
    started = time.monotonic()
    freed = free_dropped(store, cache, project, steps[:3])  # ... then free what nothing else needs
    first_call = time.monotonic() - started

    assert freed == steps[2].size
    assert [cache.has(m) for m in md5] == [True, True, False, True]
    assert free_dropped(store, cache, project, steps[:3]) == 0
    print(f"free_dropped: first call {first_call:.3f} s")


def test_free_dropped_leaves_objects_to_gc_while_the_lock_is_busy(tmp_path: Path) -> None:
    from expckpt.gc import free_dropped
    from expckpt.gclock import gc_lock

    project = make_project(tmp_path / "p", epochs=2, checkpoint={"keep_last": None})
    train_in_exp_env(project, "run")
    first = records(project, "run")[0]
    store = GitStore.open(project)
    cache = DvcCache.for_project(project, store.git_dir)
    assert store.delete_ref(first.ref.ref, first.commit)

    with gc_lock(store.git_dir, exclusive=False):  # a writer mid-checkpoint
        assert free_dropped(store, cache, project, [first], timeout=0.2) == 0
    assert cache.has(next(iter(first.outs.values())).md5)
    assert free_dropped(store, cache, project, [first]) == first.size
