"""``expckpt pull <git-remote> <exp>`` (issue 21 item 3): a remote's checkpoints go into a
quarantine namespace DVC does not read, and become ``refs/exps/...`` only once validated; a
hostile directory manifest is refused and never becomes visible to DVC."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run
from test_dirout import train
from test_multi_outputs import toy_project
from test_unsafe import plant_hostile_checkpoint


@pytest.fixture
def puller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A teammate's clone of a remote that holds a@0, a@1 and a hostile evil@0 (objects on a DVC remote)."""
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    train(proj, "a", range(2), monkeypatch)
    plant_hostile_checkpoint(proj, "../../../ESCAPED.pt")
    remote = tmp_path / "remote.git"
    run("git", "init", "-q", "--bare", str(remote), cwd=tmp_path)
    run("git", "push", "-q", str(remote), "main", "refs/exps/*:refs/exps/*", cwd=proj)
    shutil.copytree(proj / ".dvc" / "cache", tmp_path / "store")  # a local DVC remote has the cache's layout
    clone = tmp_path / "teammate"
    run("git", "clone", "-q", str(remote), str(clone), cwd=tmp_path)
    run("dvc", "remote", "add", "--local", "-d", "store", str(tmp_path / "store"), cwd=clone)
    monkeypatch.chdir(tmp_path)
    return clone


def exp_refs(repo: Path) -> list[str]:
    out = run("git", "for-each-ref", "--format=%(refname)", cwd=repo).stdout.split()
    return sorted(r.rsplit("/", 1)[1] for r in out if r.startswith(("refs/exps/", "refs/expckpt-quarantine/")))


def test_pull_publishes_valid_checkpoints_only_after_checking_them(puller: Path) -> None:
    result = run("expckpt", "pull", "origin", "a", cwd=puller)

    assert result.stdout.splitlines()[:2] == [line for line in result.stdout.splitlines() if line.startswith("Pulled")]
    assert [line.split(" (")[0] for line in result.stdout.splitlines()[:2]] == [
        "Pulled checkpoint a@0",
        "Pulled checkpoint a@1",
    ]
    assert exp_refs(puller) == ["a@0", "a@1"]
    assert run("expckpt", "show", "-A", cwd=puller).returncode == 0


def test_pull_refuses_a_hostile_manifest_and_dvc_never_sees_it(puller: Path) -> None:
    result = run("expckpt", "pull", "origin", "evil", cwd=puller, check=False)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "expckpt: refused evil@0: UNSAFE: the directory manifest of ckpt names '../../../ESCAPED.pt', outside ckpt/;"
        " it stays invisible to DVC"
    ]
    assert exp_refs(puller) == [], "neither refs/exps nor the quarantine keeps it"
    assert run("dvc", "exp", "show", "--json", "-A", cwd=puller).stdout.count("evil") == 0
