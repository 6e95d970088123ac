"""Branch points (issue 24, C): checkpoints other experiments continued or started from are kept
by retention and ``expckpt gc`` (unless ``--include-branch-points``), and shown as such."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from expckpt.store.branchpoints import branch_points
from expckpt.store.cache import DvcCache
from expckpt.ops.gc import GcScope, plan_gc
from expckpt.store.gitstore import GitStore
from expckpt.store.records import InitializedFrom, format_message, load_records
from expckpt.store.refs import CheckpointRef
from inprocess import baseline, checkpointer, new_repo, new_state, refs, train, train_step
from oracle import cache_object, cli, locked_model


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    train(project, "src", 4, config={"keep_last": None})  # src@0..3
    return project


def fine_tune(project: Path, exp: str, source: str, total: int = 2) -> None:
    state = new_state(seed=7)
    ckpt = checkpointer(project, exp, {"init_from": source})
    ckpt.restore(state)
    for step in range(total):
        ckpt.save(state, step, train_step(state, step))
    ckpt.close(state)


def apply(project: Path, name: str) -> None:
    """What `dvc exp apply <name>` does to the checkpoint file."""
    (project / "model.pt").unlink()
    shutil.copy(cache_object(project, locked_model(project, refs(project)[name])[0]), project / "model.pt")


def plan(project: Path, **kwargs: object):
    store = GitStore.open(project)
    return plan_gc(
        store, DvcCache.for_project(project, store.git_dir), project, GcScope(workspace=True), keep_last=1, **kwargs
    )


def test_a_checkpoint_a_trial_started_from_is_a_branch_point(repo: Path) -> None:
    fine_tune(repo, "ft", "src@1")
    points = branch_points(load_records(GitStore.open(repo)))
    assert points == {refs(repo)["src@1"]: ["ft"]}, "ft@1's parent ft@0 is its own chain: not a branch point"

    kept = plan(repo)
    assert "src@1" in {r.name for r in kept.keep} and kept.branch_points == {"src@1": ["ft"]}
    assert {r.name for r in kept.remove} == {"src@0", "src@2", "ft@0"}
    assert "src@1" in {r.name for r in plan(repo, include_branch_points=True).remove}


def test_a_checkpoint_another_experiment_continued_is_a_branch_point(repo: Path) -> None:
    apply(repo, "src@1")
    train(repo, "b", 4)  # b@2, b@3 continue src@1
    assert plan(repo).branch_points == {"src@1": ["b"]}


def test_gc_list_and_show_say_so(repo: Path) -> None:
    fine_tune(repo, "ft", "src@1")
    listed = cli(repo, "list", "src")
    assert next(line for line in listed.stdout.splitlines() if line.startswith("src@1 ")).endswith("branch point of ft")
    assert re.search(r"^╟ src@1 .*branch point of ft$", cli(repo, "show").stdout, re.M)

    gc = cli(repo, "gc", "-w", "--keep-last", "1", "--force")
    assert gc.returncode == 0, gc.stderr
    assert "Keeping checkpoint src@1: a branch point of ft (--include-branch-points removes it)" in gc.stdout
    assert "src@1" in refs(repo) and "src@0" not in refs(repo)
    assert cache_object(repo, locked_model(repo, refs(repo)["src@1"])[0]).is_file(), "its weights stay"

    gc = cli(repo, "gc", "-w", "--keep-last", "1", "--force", "--include-branch-points")
    assert gc.returncode == 0 and "src@1" not in refs(repo)


def test_retention_during_training_keeps_a_branch_point(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another run (a queued or --temp trial) starts from run@0 while `run` trains with keep_last 1."""
    (repo / "model.pt").unlink()
    state = new_state()
    ckpt = checkpointer(repo, "run", {"keep_last": 1})
    ckpt.restore(state)
    ckpt.save(state, 0, train_step(state, 0))
    first = ckpt.last_record
    assert first is not None
    # the trial's first checkpoint, as its own process would publish it (a real commit and ref)
    store = GitStore.open(repo)
    ref = CheckpointRef(baseline=baseline(repo), exp="ft", step=0)
    message = format_message(
        ref,
        parent=None,
        outs=first.outs,
        metrics={},
        time=time.time(),
        initialized_from=InitializedFrom("run", 0, first.commit),
    )
    store.set_ref(ref.ref, store.write_commit(store.commit_tree(baseline(repo)), [baseline(repo)], message), None)

    for step in (1, 2):
        ckpt.save(state, step, train_step(state, step))
    ckpt.close(state)

    assert sorted(n for n in refs(repo) if n.startswith("run@")) == ["run@0", "run@2"]
    assert capsys.readouterr().out.count("expckpt: kept run@0 outside the keep policy: a branch point of ft") == 1
