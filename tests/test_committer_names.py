"""Committer in-process on a real Git + DVC repository: who may write ``<exp>@<step>``.

A run never re-points a checkpoint ref that is not its own (issue #9 items 1 and 2); the
refusal is one line naming the checkpoint and a free name, and comes before training when the
Checkpointer calls ``check_name`` right after restoring.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import run
from expckpt import phases
from expckpt.serialize.atomic import WrittenFile
from expckpt.store.cache import DvcCache
from expckpt.publish.committer import Committer
from expckpt.errors import RefConflictError
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project, RunContext
from expckpt.store.refs import CheckpointRef

DVC_YAML = """stages:
  train:
    cmd: python train.py
    outs:
    - model.pt:
        checkpoint: true
        persist: true
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "train.py").write_text("print('training')\n")
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "baseline", cwd=path)
    return path


def committer(repo: Path, exp: str = "tut") -> Committer:
    store = GitStore.open(repo)
    run_ctx = RunContext(exp_name=exp, baseline=store.head(), stage="train", dvc_root=repo)
    return Committer(
        project=Project(root=repo, workspace=repo),
        run=run_ctx,
        store=store,
        cache=DvcCache.for_project(repo, store.git_dir),
        checkpoint_path="model.pt",
        live_paths=[],
    )


def written(repo: Path, data: bytes) -> WrittenFile:
    tmp = repo / f".expckpt-tmp-model.pt.{len(data)}"
    tmp.write_bytes(data)
    return WrittenFile(tmp=tmp, dest=repo / "model.pt", md5=hashlib.md5(data).hexdigest(), size=len(data))


def publish(c: Committer, step: int, data: bytes, parent: str | None = None) -> str:
    return c.publish(
        written(c.project.workspace, data), step=step, metrics={"acc": 0.5}, live_files={}, parent=parent
    ).commit


def refs(repo: Path) -> dict[str, str]:
    store = GitStore.open(repo)
    head = store.head()
    return {ref.rsplit("/", 1)[1]: sha for ref, sha in store.ref_targets(f"refs/exps/{head[:2]}/{head[2:]}/").items()}


def first_run(repo: Path, steps: int = 3) -> dict[str, str]:
    c = committer(repo)
    parent = None
    for step in range(steps):
        parent = publish(c, step, f"first run, step {step}".encode(), parent)
    return refs(repo)


def test_check_name_refuses_steps_another_run_of_the_name_holds(repo: Path) -> None:
    """`dvc exp remove tut; expckpt reset; dvc exp run -n tut` and `dvc exp apply tut@1 && dvc exp
    run -n tut`: the new run is refused before training, naming the first checkpoint in its way."""
    before = first_run(repo)
    again = committer(repo)
    with pytest.raises(RefConflictError) as fresh:
        again.check_name(0)
    assert (
        str(fresh.value)
        == (  # issue 22: the whole range, and one command that removes it
            f"checkpoints 'tut@0' to 'tut@2' already exist (3 of them; tut@0 is {before['tut@0'][:7]}, from another"
            " run of 'tut'); run with another name, e.g. dvc exp run -n tut-2, or remove them first:"
            " dvc exp remove tut@0 tut@1 tut@2"
        )
    )
    with pytest.raises(RefConflictError, match=r"checkpoint 'tut@2' already exists") as resumed:
        again.check_name(2)  # resumed from tut@1: the next step, 2, is another run's
    assert resumed.value.actual == before["tut@2"]
    with pytest.raises(RefConflictError) as last:
        again.check_name(2)
    assert (
        str(last.value)
        == (  # one checkpoint in the way: named alone
            f"checkpoint 'tut@2' already exists ({before['tut@2'][:7]}, from another run of 'tut');"
            " run with another name, e.g. dvc exp run -n tut-2, or remove it first: dvc exp remove tut@2"
        )
    )
    again.check_name(3)  # steps after the chain's end are free
    committer(repo, "other").check_name(0)  # other names are not affected
    assert refs(repo) == before


def test_the_suggested_name_is_free(repo: Path) -> None:
    first_run(repo, steps=1)
    publish(committer(repo, "tut-2"), 0, b"tut-2")
    with pytest.raises(RefConflictError, match=r"e\.g\. dvc exp run -n tut-3, or remove it first"):
        committer(repo).check_name(0)


def test_publish_refuses_another_runs_checkpoint_and_touches_nothing(repo: Path) -> None:
    before = first_run(repo)
    model = (repo / "model.pt").read_bytes()
    lock = (repo / "dvc.lock").read_bytes()
    again = committer(repo)
    file = written(repo, b"second run, step 1")
    with pytest.raises(RefConflictError, match=r"^checkpoint 'tut@1' already exists \("):
        again.publish(file, step=1, metrics={}, live_files={}, parent=before["tut@0"])
    assert refs(repo) == before
    assert (repo / "model.pt").read_bytes() == model, "the workspace still holds the last checkpoint"
    assert (repo / "dvc.lock").read_bytes() == lock
    assert file.tmp.exists(), "the caller discards its temp file"


def test_a_run_may_publish_its_own_step_again(repo: Path) -> None:
    c = committer(repo)
    first = publish(c, 0, b"step 0")
    second = publish(c, 0, b"step 0, saved again")
    assert first != second and refs(repo) == {"tut@0": second}
    c.check_name(0)  # its own checkpoints are not in its way


def test_two_runs_racing_for_a_step_never_interleave(repo: Path) -> None:
    """Two queued runs named ``q`` reach ``q@0`` together: both pass the early check, the
    create-only compare-and-swap lets exactly one write it, and the other refuses in one line."""
    winner, loser = committer(repo, "q"), committer(repo, "q")
    won: list[str] = []
    racing: list[bool] = []

    def race(name: str, step: int) -> None:
        if name == "after-lock" and not racing:  # the loser is about to write its ref
            racing.append(True)
            won.append(publish(winner, 0, b"winner"))

    unsubscribe = phases.subscribe(race)
    try:
        with pytest.raises(RefConflictError) as lost:
            publish(loser, 0, b"loser")
    finally:
        unsubscribe()
    assert str(lost.value).startswith(f"checkpoint 'q@0' already exists ({won[0][:7]}, from another run of 'q')")
    assert refs(repo) == {"q@0": won[0]}
    publish(winner, 1, b"winner 1", won[0])  # the winner goes on
    assert set(refs(repo)) == {"q@0", "q@1"}
    assert CheckpointRef.parse(lost.value.ref or "") == CheckpointRef(GitStore.open(repo).head(), "q", 0)
