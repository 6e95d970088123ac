"""A checkpoint commit's dvc.lock is what DVC itself writes for the stage at that step.

Each test publishes checkpoints in-process through the real Committer into a real Git + DVC
project, then runs the real ``dvc commit`` on the same workspace and compares dvc.lock byte for
byte: all outputs (checkpoint, other cached outputs, ``cache: false`` metrics), directory deps,
params from several files, ``foreach`` stages, other stages untouched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from conftest import run
from expckpt.serialize.atomic import TEMP_MARK, WrittenFile
from expckpt.store.cache import DvcCache
from expckpt.publish.committer import Committer
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project, RunContext

STAGE_WITH_OUTPUTS = """\
stages:
  prepare:
    cmd: python prepare.py
    deps: [prepare.py]
    outs: [data]
  train:
    cmd: python train.py
    deps: [data, train.py]
    params:
      - lr
      - extra.yaml:
          - width
    outs:
      - model.pt:
          checkpoint: true
          persist: true
      - preds.bin
    metrics:
      - scores.json:
          cache: false
"""

FOREACH_STAGE = """\
vars:
  - extra.yaml
stages:
  train:
    foreach: [lr1, lr2]
    do:
      cmd: python train.py ${item} --width ${width}
      deps: [train.py]
      params:
        - lr
        - extra.yaml:
      outs:
        - model-${item}.pt:
            checkpoint: true
            persist: true
"""


MATRIX_STAGE = """\
stages:
  train:
    matrix:
      lr: [lr1, lr2]
    cmd: python train.py ${item.lr}
    deps: [train.py]
    params: [lr]
    outs:
      - model-${item.lr}.pt:
          checkpoint: true
          persist: true
"""


def make_pipeline(path: Path, dvc_yaml: str) -> Path:
    path.mkdir(parents=True)
    files = {
        "dvc.yaml": dvc_yaml,
        "params.yaml": "lr: 0.1\nseed: 3\n",
        "extra.yaml": "width: 8\ndepth: 2\n",
        "train.py": "print('train')\n",
        "prepare.py": "print('prepare')\n",
        "data/a.csv": "1,2\n",
        "data/b.csv": "3,4\n",
    }
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    if "prepare:" in dvc_yaml:
        run("dvc", "commit", "-f", "prepare", cwd=path)  # a dvc.lock with another stage already in it
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "pipeline", cwd=path)
    return path


def committer(proj: Path, stage: str, checkpoint: str) -> Committer:
    store = GitStore.open(proj)
    baseline = run("git", "rev-parse", "HEAD", cwd=proj).stdout.strip()
    return Committer(
        project=Project(root=proj, workspace=proj),
        run=RunContext(exp_name="lock-test", baseline=baseline, stage=stage, dvc_root=proj),
        store=store,
        cache=DvcCache.for_project(proj, store.git_dir),
        checkpoint_path=checkpoint,
        live_paths=[],
    )


def checkpoint(c: Committer, step: int, data: bytes) -> str:
    dest = c.project.workspace / c.checkpoint_path
    tmp = dest.with_name(f"{TEMP_MARK}{dest.name}")
    tmp.write_bytes(data)
    written = WrittenFile(tmp=tmp, dest=dest, md5=hashlib.md5(data).hexdigest(), size=len(data))
    return c.publish(written, step=step, metrics={}, live_files={}, parent=None).commit


def show(proj: Path, commit: str, path: str) -> str:
    return run("git", "show", f"{commit}:{path}", cwd=proj).stdout


def dvc_commit_lock(proj: Path, stage: str) -> str:
    """What DVC itself writes to dvc.lock for ``stage`` with the workspace as it is."""
    run("dvc", "commit", "-f", stage, cwd=proj)
    return (proj / "dvc.lock").read_text()


@pytest.mark.slow
def test_lock_has_every_output_of_the_stage_as_dvc_commit_writes_it(tmp_path: Path) -> None:
    """Regression: the hand-rendered lock kept only model.pt; preds.bin and scores.json vanished."""
    proj = make_pipeline(tmp_path / "proj", STAGE_WITH_OUTPUTS)
    c = committer(proj, "train", "model.pt")

    (proj / "scores.json").write_text('{"acc": 0.5}')
    first = checkpoint(c, 1, os.urandom(3000))  # preds.bin not produced yet: left out
    lock = yaml.safe_load(show(proj, first, "dvc.lock"))
    assert [o["path"] for o in lock["stages"]["train"]["outs"]] == ["model.pt", "scores.json"]
    assert show(proj, first, "scores.json") == '{"acc": 0.5}'

    (proj / "scores.json").write_text('{"acc": 0.75}')
    (proj / "preds.bin").write_bytes(os.urandom(5000))
    second = checkpoint(c, 2, os.urandom(3000))
    ours = show(proj, second, "dvc.lock")
    assert ours == (proj / "dvc.lock").read_text()  # the workspace dvc.lock follows the checkpoint
    assert show(proj, second, "scores.json") == '{"acc": 0.75}'
    # The objects are in the cache already, so the commit can be checked out (dvc exp apply).
    preds = next(o for o in yaml.safe_load(ours)["stages"]["train"]["outs"] if o["path"] == "preds.bin")
    assert DvcCache.for_project(proj, proj / ".git").verify(preds["md5"]) is None
    assert ours == dvc_commit_lock(proj, "train")
    assert set(yaml.safe_load(ours)["stages"]) == {"prepare", "train"}


@pytest.mark.slow
def test_params_from_a_second_file_and_directory_deps(tmp_path: Path) -> None:
    proj = make_pipeline(tmp_path / "proj", STAGE_WITH_OUTPUTS)
    (proj / "preds.bin").write_bytes(b"preds")
    (proj / "scores.json").write_text("{}")
    commit = checkpoint(committer(proj, "train", "model.pt"), 1, b"weights")
    entry = yaml.safe_load(show(proj, commit, "dvc.lock"))["stages"]["train"]
    assert entry["params"] == {"params.yaml": {"lr": 0.1}, "extra.yaml": {"width": 8}}
    data = next(d for d in entry["deps"] if d["path"] == "data")
    assert data["md5"].endswith(".dir") and data["nfiles"] == 2
    assert show(proj, commit, "dvc.lock") == dvc_commit_lock(proj, "train")


@pytest.mark.slow
def test_matrix_stage(tmp_path: Path) -> None:
    proj = make_pipeline(tmp_path / "proj", MATRIX_STAGE)
    assert Project(root=proj, workspace=proj).checkpoint_output("model-lr1.pt", "train@lr1").persist
    commit = checkpoint(committer(proj, "train@lr1", "model-lr1.pt"), 1, b"lr1 weights")
    lock = show(proj, commit, "dvc.lock")
    assert yaml.safe_load(lock)["stages"]["train@lr1"]["cmd"] == "python train.py lr1"
    assert lock == dvc_commit_lock(proj, "train@lr1")


@pytest.mark.slow
def test_foreach_stage_named_as_dvc_stage_says(tmp_path: Path) -> None:
    """Regression: DVC_STAGE=train@lr2 (a foreach stage) was not found in dvc.yaml."""
    proj = make_pipeline(tmp_path / "proj", FOREACH_STAGE)
    project = Project(root=proj, workspace=proj)
    assert project.checkpoint_output("model-lr2.pt", "train@lr2").stage == "train@lr2"
    commit = checkpoint(committer(proj, "train@lr2", "model-lr2.pt"), 1, b"lr2 weights")
    lock = show(proj, commit, "dvc.lock")
    entry = yaml.safe_load(lock)["stages"]["train@lr2"]
    assert entry["cmd"] == "python train.py lr2 --width 8"
    assert entry["params"] == {"params.yaml": {"lr": 0.1}, "extra.yaml": {"depth": 2, "width": 8}}
    assert entry["outs"] == [
        {"path": "model-lr2.pt", "hash": "md5", "md5": hashlib.md5(b"lr2 weights").hexdigest(), "size": 11}
    ]
    assert lock == dvc_commit_lock(proj, "train@lr2")


def test_dvc_state_db_knows_the_checkpoint_hash(tmp_path: Path) -> None:
    """Regression: DVC re-hashed model.pt at the end of `dvc exp run`; now its state db has it."""
    from dvc.repo import Repo

    proj = make_pipeline(tmp_path / "proj", FOREACH_STAGE)
    data = os.urandom(4000)
    checkpoint(committer(proj, "train@lr1", "model-lr1.pt"), 1, data)
    with Repo(str(proj)) as repo:
        _, hash_info = repo.state.get(str(proj / "model-lr1.pt"), repo.fs)
    assert hash_info is not None and hash_info.value == hashlib.md5(data).hexdigest()


STAGE_SCRIPT = """\
import hashlib, os, sys
from pathlib import Path
from expckpt.serialize.atomic import TEMP_MARK, WrittenFile
from expckpt.store.cache import DvcCache
from expckpt.publish.committer import Committer
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project, RunContext

run = RunContext.from_env()
project = Project.discover()
store = GitStore.open(project.root)
c = Committer(project=project, run=run, store=store, cache=DvcCache.for_project(project.root, store.git_dir),
              checkpoint_path="model.pt", live_paths=[])
for step in range(2):
    Path("preds.bin").write_bytes(b"preds %d" % step)
    Path("scores.json").write_text('{"step": %d}' % step)
    data = os.urandom(2000)
    tmp = Path(TEMP_MARK + "model.pt")
    tmp.write_bytes(data)
    c.publish(WrittenFile(tmp.resolve(), (project.workspace / "model.pt"), hashlib.md5(data).hexdigest(), len(data)),
              step=step, metrics={}, live_files={}, parent=None)
"""


@pytest.mark.slow
def test_dvc_exp_run_writes_the_same_lock_as_the_last_checkpoint(tmp_path: Path) -> None:
    """End to end: DVC's own dvc.lock at the end of `dvc exp run` equals the last checkpoint's."""
    proj = make_pipeline(tmp_path / "proj", STAGE_WITH_OUTPUTS.replace("python train.py", "python ckpt.py"))
    (proj / "ckpt.py").write_text(STAGE_SCRIPT)
    (proj / "dvc.yaml").write_text(
        (proj / "dvc.yaml").read_text().replace("deps: [data, train.py]", "deps: [data, ckpt.py]")
    )
    run("git", "add", "-A", cwd=proj)
    run("git", "commit", "-qm", "stage script", cwd=proj)
    run("dvc", "exp", "run", "-n", "e2e", cwd=proj)
    refs = run("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=proj).stdout.split()
    last = next(r for r in refs if r.endswith("/e2e@1"))
    final = next(r for r in refs if r.endswith("/e2e"))
    assert show(proj, last, "dvc.lock") == show(proj, final, "dvc.lock")
    assert show(proj, last, "scores.json") == show(proj, final, "scores.json") == '{"step": 1}'
