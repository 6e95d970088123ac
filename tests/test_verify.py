"""``expckpt verify [EXP] [--all]``: every checkpoint's object is rehashed; tampering and loss
are caught and named (issue: crash-safe, tamper-safe checkpoints)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from faultkit import EPOCHS, cache_object, checkpoint_refs, cli, locked_model, run, trained


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A project with checkpoints straight@0..2 (a copy of the session's reference run)."""
    return trained(tmp_path_factory, tmp_path / "p")


def object_of(project: Path, name: str) -> tuple[str, Path]:
    md5, _ = locked_model(project, checkpoint_refs(project)[name].commit)
    return md5, cache_object(project, md5)


@pytest.mark.slow
def test_intact_checkpoints_verify(project: Path) -> None:
    result = run("expckpt", "verify", "--all", cwd=project, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{EPOCHS} of {EPOCHS} checkpoints verified"
    assert result.stderr == ""
    assert cli(project, "verify").returncode == 0, "HEAD's experiments, without --all"
    assert cli(project, "verify", "straight").returncode == 0


@pytest.mark.slow
def test_corrupt_object_is_named_and_fails(project: Path) -> None:
    md5, obj = object_of(project, "straight@1")
    assert not obj.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), "cache objects are read-only"
    obj.chmod(0o644)
    with open(obj, "r+b") as handle:  # flip bytes in place, as bit rot or a careless edit would
        handle.seek(obj.stat().st_size // 2)
        handle.write(b"\x00tampered\x00")

    result = run("expckpt", "verify", "--all", cwd=project, check=False)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("expckpt: straight@1 (") and "corrupt" in lines[0] and md5 in lines[0]
    assert result.stdout.strip() == f"{EPOCHS - 1} of {EPOCHS} checkpoints verified, 1 broken"
    only = cli(project, "verify", "straight")
    assert only.returncode == 1 and "straight@1" in only.stderr


def test_missing_object_is_named_and_fails(project: Path) -> None:
    _md5, obj = object_of(project, "straight@0")
    obj.unlink()

    result = cli(project, "verify", "--all")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("expckpt: straight@0 (") and "missing" in lines[0], result.stderr
    assert lines[1].startswith("expckpt: 1 checkpoint has no cache object") and "dvc exp pull" in lines[1]
    assert "1 broken" in result.stdout


def test_verify_of_unknown_experiment_suggests(project: Path) -> None:
    result = cli(project, "verify", "straigth")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "expckpt: error: no checkpoint named 'straigth'; did you mean 'straight'"
    )


def test_checkpoint_commit_whose_dvc_lock_was_edited_fails(project: Path, tmp_path: Path) -> None:
    """A checkpoint ref moved to a look-alike commit whose dvc.lock names other bytes."""
    target = checkpoint_refs(project)["straight@1"]
    md5, _ = locked_model(project, target.commit)
    lock = run("git", "show", f"{target.commit}:dvc.lock", cwd=project).stdout.replace(md5, "0" * 32)
    (tmp_path / "dvc.lock").write_text(lock)
    blob = run("git", "hash-object", "-w", str(tmp_path / "dvc.lock"), cwd=project).stdout.strip()
    index = {"GIT_INDEX_FILE": str(tmp_path / "index")}
    run("git", "read-tree", target.commit, cwd=project, env=index)
    run("git", "update-index", "--cacheinfo", f"100644,{blob},dvc.lock", cwd=project, env=index)
    tree = run("git", "write-tree", cwd=project, env=index).stdout.strip()
    (tmp_path / "message").write_text(run("git", "log", "-1", "--format=%B", target.commit, cwd=project).stdout)
    parent = run("git", "rev-parse", f"{target.commit}^", cwd=project).stdout.strip()
    forged = run("git", "commit-tree", tree, "-p", parent, "-F", str(tmp_path / "message"), cwd=project).stdout.strip()
    run("git", "update-ref", target.ref, forged, target.commit, cwd=project)

    result = cli(project, "verify", "--all")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"expckpt: straight@1 ({forged[:7]})"), result.stderr
    assert f"dvc.lock does not record model.pt as {md5}" in lines[0]


def test_checkpoint_removed_by_retention_while_verify_runs_is_not_broken(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21 item 6: retention of a training run deletes straight@0's ref, then its object,
    between verify listing the checkpoints and hashing them (the real interleaving, forced)."""
    from expckpt import cli as cli_module
    from expckpt.store.cache import DvcCache
    from expckpt.store.gitstore import GitStore

    ref = checkpoint_refs(project)["straight@0"]
    _md5, obj = object_of(project, "straight@0")
    real_verify = DvcCache.verify

    def retention_runs_now(cache: DvcCache, digest: str) -> str | None:
        if obj.exists():
            GitStore.open(project).delete_ref(ref.ref, ref.commit)  # as retention does: ref first,
            obj.unlink()  # then the object
        return real_verify(cache, digest)

    monkeypatch.setattr(DvcCache, "verify", retention_runs_now)
    monkeypatch.chdir(project)

    code = cli_module.main(["verify", "--all"])

    out, err = capsys.readouterr()
    assert err == ""
    assert (
        out.strip()
        == f"{EPOCHS - 1} of {EPOCHS - 1} checkpoints verified (1 removed by retention or gc while verify ran)"
    )
    assert code == 0
