"""Checkpoint strategies during training: retention, Keras-style lines, bad values, stopping."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import make_project, run, train_in_exp_env
from expckpt.store.cache import DvcCache
from expckpt.store.catalog import Catalog
from expckpt.store.gitstore import GitStore


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
    kept_objects = {o.md5 for r in records(project, "long") for o in r.outs.values()}
    # Dropped checkpoints' objects were freed during training: the cache holds the kept ones only.
    assert len(written) == 12 and {m for m in written if cache.has(m)} == kept_objects

    gc = run("expckpt", "gc", "--workspace", "--force", cwd=project)
    assert "Nothing to collect." in gc.stdout
    assert run("expckpt", "verify", cwd=project).returncode == 0
    listing = json.loads(run("expckpt", "list", "long", "--json", cwd=project).stdout)
    assert {c["name"]: c["kept_by"] for c in listing} == {
        "long@0": ["best"],
        "long@9": ["last"],
        "long@10": ["last"],
        "long@11": ["last", "newest"],
    }


@pytest.mark.slow
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


@pytest.mark.slow
def test_every_n_steps_and_the_last_step_is_always_saved(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=5, checkpoint={"every": 2, "keep_last": None})

    train_in_exp_env(project, "sparse")

    assert sorted(r.step for r in records(project, "sparse")) == [1, 3, 4]


@pytest.mark.slow
def test_every_zero_turns_checkpoints_off_but_writes_the_model(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=2, checkpoint={"every": 0})

    train_in_exp_env(project, "off")

    assert records(project, "off") == []
    assert (project / "model.pt").is_file()


@pytest.mark.slow
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
    assert f"expckpt: stopping training at step {stopped_at} (diverging; checkpoint.on_divergence: stop)" in (
        result.stdout.splitlines()
    )
    kept = sorted(records(project, "boom"), key=lambda r: r.step)
    assert [r.step for r in kept] == list(range(stopped_at + 1))  # keep_last: None keeps every step
    best = max(kept, key=lambda r: (r.metrics["acc"], -r.step))  # the first step of the highest acc
    analysed = json.loads(run("expckpt", "report", "boom", "--json", cwd=project).stdout)
    assert analysed["diverging"] is True and 0 < analysed["diverging_since"] <= stopped_at
    assert analysed["best_step"] == analysed["recommended_step"] == best.step
    report = run("expckpt", "report", "boom", cwd=project).stdout.splitlines()
    assert [line for line in report if line.endswith(": diverging")] == [
        f"  loss rose {analysed['rising_steps']} steps in a row since step {analysed['diverging_since']}: diverging"
        if analysed["rising_steps"]
        else f"  NaN in loss at step {analysed['diverging_since']}: diverging"
    ]
    assert report[-1] == f"  checkpoint to apply: dvc exp apply boom@{best.step}"


# --------------------------------------------------------------------------- freeing during training (#14.6)


@pytest.mark.slow
def test_free_dropped_frees_what_retention_dropped_unless_something_else_needs_it(tmp_path: Path) -> None:
    from expckpt.ops.gc import free_dropped

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
        store.delete_ref(record.ref.ref, record.commit)
        assert store.get_ref(record.ref.ref) is None
    started = time.monotonic()
    freed = free_dropped(store, cache, project, steps[:3])  # ... then free what nothing else needs
    first_call = time.monotonic() - started

    assert freed == steps[2].size
    assert [cache.has(m) for m in md5] == [True, True, False, True]
    assert free_dropped(store, cache, project, steps[:3]) == 0
    print(f"free_dropped: first call {first_call:.3f} s")


@pytest.mark.slow
def test_free_dropped_leaves_objects_to_gc_while_the_lock_is_busy(tmp_path: Path) -> None:
    from expckpt.ops.gc import free_dropped
    from expckpt.store.gclock import gc_lock

    project = make_project(tmp_path / "p", epochs=2, checkpoint={"keep_last": None})
    train_in_exp_env(project, "run")
    first = records(project, "run")[0]
    store = GitStore.open(project)
    cache = DvcCache.for_project(project, store.git_dir)
    store.delete_ref(first.ref.ref, first.commit)
    assert store.get_ref(first.ref.ref) is None

    with gc_lock(store.git_dir, exclusive=False):  # a writer mid-checkpoint
        assert free_dropped(store, cache, project, [first], timeout=0.2) == 0
    assert cache.has(next(iter(first.outs.values())).md5)
    assert free_dropped(store, cache, project, []) == first.size, "left over objects go with the next call"


# --------------------------------------------------------------------------- one keep policy (#9.6, #10)


@pytest.mark.parametrize(
    "section",
    [
        {"keep_last": None},
        {"keep_last": None, "keep_best": 2, "monitor": "acc"},
        {"keep_last": 3, "keep_best": 1, "monitor": "loss", "mode": "min"},
        {"regime": "short", "monitor": "acc"},
    ],
)
def test_training_and_gc_build_their_keep_policy_with_one_function(section: dict) -> None:
    from expckpt.policy.config import CheckpointConfig
    from expckpt.policy.policy import CheckpointInfo, KeepAll, keep_policy

    config = CheckpointConfig.from_params(section)
    built = keep_policy(
        keep_last=config.keep_last, keep_best=config.keep_best, monitor=config.monitor, mode=config.mode
    )
    assert config.keep_policy() == built
    if config.keep_last is None:
        assert KeepAll() in built.policies
        infos = [CheckpointInfo(step=s, metrics={"acc": 0.1 * s}) for s in range(5)]
        assert built.should_keep(infos) == [True] * 5


def test_keep_policy_needs_a_monitor_for_keep_best_and_info_comes_from_a_record(tmp_path: Path) -> None:
    from expckpt.errors import ConfigError
    from expckpt.policy.policy import CheckpointInfo, keep_policy

    with pytest.raises(ConfigError, match=r"checkpoint\.monitor is required when checkpoint\.keep_best is 2"):
        keep_policy(keep_last=1, keep_best=2)
    with pytest.raises(ConfigError, match=r"checkpoint\.keep_best must be a non-negative integer, got -1"):
        keep_policy(keep_last=1, keep_best=-1)

    class Record:
        step, metrics, time = 7, {"acc": 0.5}, 12.5

    assert CheckpointInfo.of(Record()) == CheckpointInfo(step=7, metrics={"acc": 0.5}, time=12.5)
