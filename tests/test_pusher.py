"""The background pusher: coalescing, one warning, a bounded wait at the end; real child
processes pushing to a bare Git remote and a local-directory DVC remote."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import make_project, run, train_in_exp_env
from expckpt.store.catalog import Catalog
from expckpt.store.gitstore import GitStore
from expckpt.publish.pusher import Pusher
from expckpt.store.records import CheckpointRecord
from expckpt.publish.remote import PushTarget

TARGET = PushTarget(git_remote="origin", dvc_remote="store", source="checkpoint.push")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CheckpointRecord]]:
    root = tmp_path_factory.mktemp("pusher")
    project = make_project(root / "project", epochs=3, checkpoint={"every": 1, "keep_last": None})
    run("dvc", "remote", "add", "-d", "store", str(root / "store"), cwd=project)
    train_in_exp_env(project, "tut")
    return project, sorted(Catalog.load(GitStore.open(project)).records, key=lambda r: r.step)


def _remote(project: Path, path: Path) -> None:
    run("git", "remote", "remove", "origin", cwd=project, check=False)
    run("git", "remote", "add", "origin", str(path), cwd=project)


@pytest.mark.slow
def test_queued_checkpoints_coalesce_and_all_go(trained: tuple[Path, list[CheckpointRecord]], tmp_path: Path) -> None:
    project, records = trained
    remote = tmp_path / "remote.git"
    run("git", "init", "-q", "--bare", str(remote), cwd=tmp_path)
    _remote(project, remote)
    lines: list[str] = []
    pusher = Pusher(TARGET, project, lines.append)
    for record in records:
        pusher.submit(record)
    assert pusher.close(wait_s=120) is True
    assert sorted(pusher.pushed) == ["tut@0", "tut@1", "tut@2"]
    pushed_lines = [line for line in lines if line.startswith("expckpt: pushed ")]
    assert 1 <= len(pushed_lines) <= 2, lines  # the first batch may start before the others are queued
    listed = run("git", "ls-remote", str(remote), cwd=tmp_path).stdout
    assert all(f"{r.commit}\t{r.ref.ref}" in listed for r in records)


@pytest.mark.slow
def test_a_failing_remote_is_said_once_and_the_end_wait_is_bounded(
    trained: tuple[Path, list[CheckpointRecord]], tmp_path: Path
) -> None:
    project, records = trained
    _remote(project, tmp_path / "missing.git")
    lines: list[str] = []
    pusher = Pusher(TARGET, project, lines.append)
    pusher.submit(records[0])
    deadline = time.monotonic() + 60
    while not any("could not push" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.2)
    pusher.submit(records[1])  # joins the next attempt after the backoff, does not start one now
    time.sleep(0.5)
    assert pusher.attempts == 1
    started = time.monotonic()
    assert pusher.close(wait_s=10) is False
    assert time.monotonic() - started < 10 + 8  # the wait, then killing the child and joining
    warnings = [line for line in lines if "could not push" in line]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith("expckpt: warning: could not push tut@0 to origin: ")
    assert warnings[0].endswith("; training goes on, will retry")
    gave_up = [line for line in lines if line.startswith("expckpt: warning: gave up pushing")]
    assert len(gave_up) == 1 and gave_up[0].startswith(
        "expckpt: warning: gave up pushing tut@0, tut@1 to origin after 10 s ("
    ), lines
    assert gave_up[0].endswith("push later with `dvc exp push origin tut@1`")
    assert pusher.pushed == []
