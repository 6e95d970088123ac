"""``expckpt gc``: scope flags, retention flags, dry run, and never touching what it did not write."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_project, run, train_in_exp_env
from expckpt.cache import DvcCache
from expckpt.catalog import Catalog
from expckpt.gitstore import GitStore


def checkpoint_names(project: Path) -> set[str]:
    return {r.name for r in Catalog.load(GitStore.open(project)).records}


def cache_objects(project: Path) -> set[str]:
    return {md5 for md5, _ in DvcCache.for_project(project, project / ".git").iter_objects()}


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


def test_workspace_scope_removes_checkpoints_of_other_baselines_and_their_cache(trained: Path) -> None:
    old = [r for r in Catalog.load(GitStore.open(trained)).records if r.exp == "old"]
    old_objects = {o.md5 for r in old for o in r.outs.values()}

    result = run("expckpt", "gc", "--workspace", "--force", cwd=trained)

    assert checkpoint_names(trained) == {"new@0", "new@1", "new@2", "new@3"}
    assert "Removed 4 checkpoints" in result.stdout
    assert not (old_objects & cache_objects(trained)), "objects only the old checkpoints used must be freed"
    assert run("expckpt", "verify", cwd=trained).returncode == 0


def test_all_commits_scope_keeps_everything(trained: Path) -> None:
    before = checkpoint_names(trained)
    result = run("expckpt", "gc", "--all-commits", "--force", cwd=trained)
    assert checkpoint_names(trained) == before
    assert "Nothing to collect." in result.stdout


def test_dry_run_lists_what_would_go_with_bytes_and_removes_nothing(trained: Path) -> None:
    before_refs, before_objects = checkpoint_names(trained), cache_objects(trained)

    result = run("expckpt", "gc", "--workspace", "--dry-run", cwd=trained)

    assert "Would remove checkpoint old@0" in result.stdout
    assert "Would free" in result.stdout and "kB" in result.stdout
    assert checkpoint_names(trained) == before_refs and cache_objects(trained) == before_objects


def test_keep_last_and_keep_best_per_experiment(trained: Path) -> None:
    records = [r for r in Catalog.load(GitStore.open(trained)).records if r.exp == "new"]
    worst = min(records, key=lambda r: r.metrics["acc"])  # keep-best by acc with mode min keeps it

    run("expckpt", "gc", "--all-commits", "--keep-last", "1", "--keep-best", "1", "--metric", "acc", "--mode", "min", "--force", cwd=trained)

    survivors = checkpoint_names(trained)
    assert {"new@3", worst.name} <= survivors
    assert {"old@3"} <= survivors
    assert len([n for n in survivors if n.startswith("new@")]) == len({"new@3", worst.name})


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


def test_scope_is_required_and_no_prompt_without_a_terminal(trained: Path) -> None:
    missing = run("expckpt", "gc", cwd=trained, check=False)
    assert missing.returncode == 1 and "--workspace" in missing.stderr
    unconfirmed = run("expckpt", "gc", "--workspace", cwd=trained, check=False)
    assert unconfirmed.returncode == 1
    assert "pass --force" in unconfirmed.stderr
    assert "old@0" in checkpoint_names(trained)
