"""``expckpt gc``: scope flags, retention flags, dry run, and never touching what it did not write."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_project, run, train_in_exp_env
from expckpt.serialize.atomic import TEMP_MARK, md5_file
from expckpt.store.cache import DvcCache
from expckpt.store.catalog import Catalog
from expckpt.cli.context import _size
from expckpt.store.gitstore import GitStore


def checkpoint_names(project: Path) -> set[str]:
    return {r.name for r in Catalog.load(GitStore.open(project)).records}


def cache_objects(project: Path) -> set[str]:
    base = DvcCache.for_project(project, project / ".git").root / "files" / "md5"
    return {obj.parent.name + obj.name for obj in base.glob("??/*") if TEMP_MARK not in obj.name}


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("gc") / "p", epochs=4, checkpoint={"keep_last": None})
    train_in_exp_env(project, "old")
    # a new commit on main: "old" is now based on a commit that is no longer HEAD
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.003", "lr: 0.002"))  # other weights
    run("git", "add", "params.yaml", cwd=project)
    run("git", "commit", "-qm", "new baseline", cwd=project)
    (project / "model.pt").unlink()
    run("rm", "-rf", "dvclive", ".dvc/tmp/expckpt", cwd=project)
    train_in_exp_env(project, "new")
    return project


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> Path:
    """A private copy of the trained repository for each test."""
    copy = tmp_path / "p"
    shutil.copytree(trained_once, copy, symlinks=True)
    return copy


@pytest.mark.slow
def test_workspace_scope_removes_checkpoints_of_other_baselines_and_their_cache(trained: Path) -> None:
    old = [r for r in Catalog.load(GitStore.open(trained)).records if r.exp == "old"]
    old_objects = {o.md5 for r in old for o in r.outs.values()}

    result = run("expckpt", "gc", "--workspace", "--force", cwd=trained)

    assert checkpoint_names(trained) == {"new@0", "new@1", "new@2", "new@3"}
    assert "Removed 4 checkpoints" in result.stdout
    assert not (old_objects & cache_objects(trained)), "objects only the old checkpoints used must be freed"
    assert run("expckpt", "verify", cwd=trained).returncode == 0


@pytest.mark.slow
def test_all_commits_scope_keeps_everything(trained: Path) -> None:
    before = checkpoint_names(trained)
    result = run("expckpt", "gc", "--all-commits", "--force", cwd=trained)
    assert checkpoint_names(trained) == before
    assert "Nothing to collect." in result.stdout


@pytest.mark.slow
def test_dry_run_lists_what_would_go_with_bytes_and_removes_nothing(trained: Path) -> None:
    before_refs, before_objects = checkpoint_names(trained), cache_objects(trained)

    result = run("expckpt", "gc", "--workspace", "--dry-run", cwd=trained)

    assert "Would remove checkpoint old@0" in result.stdout
    assert "Would free" in result.stdout and "kB" in result.stdout
    assert checkpoint_names(trained) == before_refs and cache_objects(trained) == before_objects


@pytest.mark.slow
def test_keep_last_and_keep_best_per_experiment(trained: Path) -> None:
    records = [r for r in Catalog.load(GitStore.open(trained)).records if r.exp == "new"]
    worst = min(records, key=lambda r: r.metrics["acc"])  # keep-best by acc with mode min keeps it

    run(
        "expckpt",
        "gc",
        "--all-commits",
        "--keep-last",
        "1",
        "--keep-best",
        "1",
        "--metric",
        "acc",
        "--mode",
        "min",
        "--force",
        cwd=trained,
    )

    survivors = checkpoint_names(trained)
    assert {"new@3", worst.name} <= survivors
    assert {"old@3"} <= survivors
    assert len([n for n in survivors if n.startswith("new@")]) == len({"new@3", worst.name})


@pytest.mark.slow
def test_never_touches_refs_or_objects_it_did_not_write(trained: Path) -> None:
    store = GitStore.open(trained)
    head = run("git", "rev-parse", "HEAD~1", cwd=trained).stdout.strip()
    foreign_ref = f"refs/exps/{head[:2]}/{head[2:]}/someone-else"
    run("git", "update-ref", foreign_ref, head, cwd=trained)
    foreign = DvcCache.for_project(trained, trained / ".git").object_path("0" * 32)
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_bytes(b"not expckpt's")

    run("expckpt", "gc", "--workspace", "--force", cwd=trained)

    assert store.get_ref(foreign_ref) == head
    assert foreign.read_bytes() == b"not expckpt's"


@pytest.mark.slow
def test_scope_is_required_and_no_prompt_without_a_terminal(trained: Path) -> None:
    missing = run("expckpt", "gc", cwd=trained, check=False)
    assert missing.returncode == 1 and "--workspace" in missing.stderr
    unconfirmed = run("expckpt", "gc", "--workspace", cwd=trained, check=False)
    assert unconfirmed.returncode == 1
    assert "pass --force" in unconfirmed.stderr
    assert "old@0" in checkpoint_names(trained)


# --------------------------------------------------------------------------- what else needs objects (#9.3)


def record(project: Path, name: str):
    return Catalog.load(GitStore.open(project)).resolve(name)


def md5_of_record(rec) -> str:
    return next(iter(rec.outs.values())).md5


def md5_of(project: Path, name: str) -> str:
    return md5_of_record(record(project, name))


def object_bytes(project: Path, md5: str) -> bytes:
    return DvcCache.for_project(project, project / ".git").object_path(md5).read_bytes()


@pytest.mark.slow
def test_objects_other_dvc_metafiles_name_survive_gc(trained: Path) -> None:
    """A committed `.dvc` file (on a branch), a stage in a subdirectory's dvc.yaml/dvc.lock and an
    untracked `.dvc` file in the workspace each name an object that only a removed checkpoint
    had; gc must keep all three and free the rest."""
    exported, staged, loose, only = (md5_of(trained, n) for n in ("old@0", "old@1", "new@0", "old@3"))
    # a checkpoint exported and tracked with `dvc add`, committed on a branch that is not checked out
    run("git", "checkout", "-qb", "export", cwd=trained)
    (trained / "exported").mkdir()
    (trained / "exported" / "best.pt").write_bytes(object_bytes(trained, exported))
    run("dvc", "add", "-q", "exported/best.pt", cwd=trained)
    # a pipeline in a subdirectory whose dvc.lock names another checkpoint's object
    sub = trained / "serving"
    sub.mkdir()
    (sub / "weights.pt").write_bytes(object_bytes(trained, staged))
    (sub / "dvc.yaml").write_text("stages:\n  pack:\n    cmd: 'true'\n    outs:\n      - weights.pt\n")
    run("dvc", "commit", "-q", "-f", "serving/dvc.yaml:pack", cwd=trained)
    assert staged in (sub / "dvc.lock").read_text()
    run("git", "add", "exported", "serving/dvc.yaml", "serving/dvc.lock", "serving/.gitignore", cwd=trained)
    run("git", "commit", "-qm", "export checkpoints", cwd=trained)
    run("git", "checkout", "-q", "main", cwd=trained)
    assert not (trained / "exported" / "best.pt.dvc").exists() and not (sub / "dvc.lock").exists()
    # an untracked `.dvc` file in the workspace
    (trained / "loose.pt").write_bytes(object_bytes(trained, loose))
    run("dvc", "add", "-q", "loose.pt", cwd=trained)

    run("expckpt", "gc", "--workspace", "--keep-last", "1", "-f", cwd=trained)

    assert checkpoint_names(trained) == {"new@3"}
    objects = cache_objects(trained)
    assert {exported, staged, loose} <= objects, "objects other DVC metafiles name must survive"
    assert only not in objects, "an object nothing else names is freed"
    # and DVC can still check every one of them out
    run("git", "checkout", "-q", "export", cwd=trained)
    for path in ("exported/best.pt", "serving/weights.pt", "loose.pt"):
        (trained / path).unlink()
    run("dvc", "checkout", "-q", "exported/best.pt.dvc", "serving/dvc.yaml", "loose.pt.dvc", cwd=trained)
    assert (trained / "serving" / "weights.pt").read_bytes() == object_bytes(trained, staged)
    assert {md5 for md5, _ in [md5_file(trained / p) for p in ("exported/best.pt", "loose.pt")]} == {exported, loose}


# --------------------------------------------------------------------------- one keep policy (#9.6)


@pytest.mark.slow
def test_keep_last_null_means_keep_all_in_gc_as_in_params(trained: Path) -> None:
    from expckpt.policy.config import CheckpointConfig
    from expckpt.ops.gc import GcScope, plan_gc

    store = GitStore.open(trained)
    cache = DvcCache.for_project(trained, store.git_dir)
    config = CheckpointConfig.from_params({"keep_last": None, "keep_best": 1, "monitor": "acc"})
    plan = plan_gc(
        store,
        cache,
        trained,
        GcScope(all_commits=True),
        keep_last=config.keep_last,
        keep_best=config.keep_best,
        metric=config.monitor,
        mode=config.mode,
    )
    assert plan.remove == [], "keep_last None keeps every checkpoint, as it does during training"

    refused = run("expckpt", "gc", "-A", "--keep-best", "1", "--metric", "acc", "-f", cwd=trained, check=False)
    assert refused.returncode == 1 and "add --keep-last N" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert checkpoint_names(trained) >= {"new@0", "new@1", "old@0"}


# --------------------------------------------------------------------------- no terminal, true figures (#14.7)


def gc_without_terminal(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["expckpt", "gc", *args], cwd=project, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
    )


@pytest.mark.slow
def test_without_a_terminal_refuses_before_listing_and_freed_bytes_are_what_was_deleted(trained: Path) -> None:
    run("dvc", "exp", "branch", "new@1", "keep-new1", cwd=trained)
    branch_kept = md5_of(trained, "new@1")
    before = cache_objects(trained)

    refused = gc_without_terminal(trained, "-w", "--keep-last", "1")

    assert refused.returncode == 1 and refused.stdout == ""
    assert "Removing" not in refused.stdout + refused.stderr and "Freeing" not in refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "refusing to remove 7 checkpoints" in line and "pass --force" in line
    assert cache_objects(trained) == before and "old@0" in checkpoint_names(trained)

    cache = DvcCache.for_project(trained, trained / ".git")
    sizes = {md5: cache.object_path(md5).stat().st_size for md5 in before}
    dry = gc_without_terminal(trained, "-w", "--keep-last", "1", "--dry-run")
    done = gc_without_terminal(trained, "-w", "--keep-last", "1", "--force")

    assert done.returncode == 0, done.stderr
    deleted = before - cache_objects(trained)
    assert branch_kept not in deleted, "the branch made with `dvc exp branch` keeps its object"
    assert "Removed checkpoint new@1" in done.stdout
    figure = _size(sum(sizes[m] for m in deleted))
    assert f"freed {figure} in {len(deleted)} cache objects" in done.stdout
    assert f"Would free {figure} in {len(deleted)} cache objects" in dry.stdout


# --------------------------------------------------------------------------- behind a paused writer (#9.13)


@pytest.fixture
def paused_writer(trained: Path) -> Iterator[subprocess.Popen]:
    """A real process holding the writers' (shared) gc lock, then stopped with SIGSTOP."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom expckpt.store.gclock import gc_lock\n"
            "with gc_lock(sys.argv[1], exclusive=False):\n    print('held', flush=True)\n    time.sleep(300)\n",
            str(trained / ".git"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        yield holder
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_gc_behind_a_paused_writer_names_it_and_times_out_while_dry_run_plans(
    trained: Path, paused_writer: subprocess.Popen
) -> None:
    before = checkpoint_names(trained)

    dry = run("expckpt", "gc", "--workspace", "--dry-run", cwd=trained, timeout=60)
    assert "Would remove checkpoint old@0" in dry.stdout

    started = time.monotonic()
    blocked = run("expckpt", "gc", "--workspace", "--force", "--wait", "1", cwd=trained, check=False, timeout=60)

    assert time.monotonic() - started < 30
    assert blocked.returncode == 1 and "Removed" not in blocked.stdout
    assert f"waiting up to 1 s for the gc lock, held by pid {paused_writer.pid}" in blocked.stderr
    error = blocked.stderr.strip().splitlines()[-1]
    assert error.startswith("expckpt: error: timed out after 1 s") and f"pid {paused_writer.pid} (python -c" in error
    assert "a checkpoint writer" in error and "nothing was removed" in error
    assert checkpoint_names(trained) == before


@pytest.mark.slow
def test_executes_the_confirmed_plan_when_refs_change_meanwhile(trained: Path) -> None:
    from expckpt.ops.gc import GcScope, collect, plan_gc

    store = GitStore.open(trained)
    cache = DvcCache.for_project(trained, store.git_dir)
    plan = plan_gc(store, cache, trained, GcScope(workspace=True))
    assert {r.name for r in plan.remove} == {"old@0", "old@1", "old@2", "old@3"}
    gone, moved, elsewhere = record(trained, "old@0"), record(trained, "old@1"), record(trained, "old@2").commit
    # after the plan: DVC removes one ref, and another is pointed at a different commit
    run("dvc", "exp", "remove", "old@0", cwd=trained)
    run("git", "update-ref", moved.ref.ref, elsewhere, cwd=trained)

    result = collect(plan, store, cache, trained, timeout=5)

    assert [r.name for r in result.gone] == ["old@0"]
    assert [(r.name, now) for r, now in result.moved] == [("old@1", elsewhere)]
    assert {r.name for r in result.removed} == {"old@2", "old@3"}
    assert store.get_ref(moved.ref.ref) == elsewhere  # kept, where it points now
    objects = cache_objects(trained)
    assert md5_of_record(moved) in objects, "a ref that moved keeps its objects"
    assert md5_of_record(gone) not in objects, "a ref DVC removed frees its objects like a removed one"
    assert sum(result.freed.values()) == result.bytes and set(result.freed) <= set(plan.objects)


@pytest.mark.slow
def test_commands_leave_no_shutdown_noise_with_packed_objects(trained: Path) -> None:
    """dulwich's pack finalisers must run before interpreter exit, not print 'Exception ignored'."""
    run("git", "gc", "-q", cwd=trained)  # objects in packs, as after a while in any repository
    for args in (["gc", "--workspace", "--keep-last", "1", "--dry-run"], ["show"], ["verify", "--all"]):
        proc = run("expckpt", *args, cwd=trained)
        assert proc.stderr == "", (args, proc.stderr)


def test_gc_refuses_on_an_unborn_branch_like_show_and_list(trained: Path) -> None:
    before = checkpoint_names(trained)
    run("git", "checkout", "-q", "--orphan", "fresh", cwd=trained)

    result = run("expckpt", "gc", "--workspace", "--force", cwd=trained, check=False)

    assert result.returncode == 1
    assert result.stderr.strip() == "expckpt: error: this repository has no commits yet; commit your project first"
    assert checkpoint_names(trained) == before, "gc on an unborn HEAD must not remove the runs made before"
    assert "no commits yet" in run("expckpt", "show", cwd=trained, check=False).stderr
