"""Publishing one checkpoint, in process, on a real temporary Git + DVC repository.

The order is what makes a crash safe: cache object, pending mark, file, commit, workspace
dvc.lock, ref, note. A subscriber of ``expckpt.phases`` looks at the repository at each phase
(as fault injection does) and sees exactly what should exist by then; the ref appears last but
for the note that names it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run
from expckpt import phases
from expckpt.serialize.atomic import md5_file
from expckpt.serialize.checkpoint_file import write_temp
from expckpt.publish.committer import Committer
from expckpt.store.session import SessionNote
from expckpt.train.wiring import wire
from inprocess import baseline, dvc_env, new_repo, new_state
from oracle import cache_object, check_consistent, git


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    return project


def committer(project: Path, exp: str = "run") -> Committer:
    c = wire(None, env=dvc_env(project, exp)).committer
    assert c is not None
    return c


def payload(step: int) -> dict:
    state = new_state(seed=step)
    state.step = step
    return state.capture()


def ref_name(project: Path, name: str) -> str:
    base = baseline(project)
    return f"refs/exps/{base[:2]}/{base[2:]}/{name}"


def test_phases_come_in_order_and_the_ref_appears_last(repo: Path) -> None:
    c = committer(repo)
    written = write_temp(payload(0), repo / "model.pt")
    ref = ref_name(repo, "run@0")
    seen: list[tuple[str, dict[str, bool]]] = []

    def look(name: str, step: int) -> None:
        lock = repo / "dvc.lock"
        note = SessionNote.read(repo, "model.pt")
        seen.append(
            (
                name,
                {
                    "object": cache_object(repo, written.md5).is_file(),
                    "pending": SessionNote.pending(repo, "model.pt") == (ref, written.md5),
                    "file": (repo / "model.pt").is_file() and md5_file(repo / "model.pt")[0] == written.md5,
                    "lock": lock.is_file() and written.md5 in lock.read_text(),
                    "ref": c.store.get_ref(ref) is not None,
                    "note": note is not None and note.ref == ref,
                },
            )
        )
        assert step == 0

    unsubscribe = phases.subscribe(look)
    try:
        record = c.publish(written, step=0, metrics={"acc": 0.5}, live_files={}, parent=None)
    finally:
        unsubscribe()

    names = ["object", "pending", "file", "lock", "ref", "note"]
    has = {phase: [k for k in names if state[k]] for phase, state in seen}
    assert [phase for phase, _ in seen] == list(phases.PHASES)
    assert has == {
        "after-temp": [],
        "after-cache": ["object"],
        "after-publish": ["object", "pending", "file"],
        "after-commit": ["object", "pending", "file"],
        "after-lock": ["object", "pending", "file", "lock"],
        "after-ref": ["object", "pending", "file", "lock", "ref"],
        "after-note": ["object", "file", "lock", "ref", "note"],
    }
    assert c.store.get_ref(ref) == record.commit


def test_the_commit_is_the_workspace_on_the_baseline_with_dvc_lock_and_live_files(repo: Path) -> None:
    (repo / "params.yaml").write_text("lr: 0.05\n")  # as `dvc exp run -S lr=0.05` leaves it
    c = committer(repo)
    written = write_temp(payload(0), repo / "model.pt")
    live = {"dvclive/metrics.json": json.dumps({"step": 0, "acc": 0.5}).encode()}

    record = c.publish(written, step=0, metrics={"acc": 0.5}, live_files=live, parent=None)

    assert (record.name, record.parent, record.resumed) == ("run@0", None, False)
    assert git(repo, "rev-list", "--parents", "-n1", record.commit).split() == [record.commit, baseline(repo)]
    assert yaml.safe_load(git(repo, "show", f"{record.commit}:params.yaml")) == {"lr": 0.05}
    assert json.loads(git(repo, "show", f"{record.commit}:dvclive/metrics.json")) == {"step": 0, "acc": 0.5}
    lock = yaml.safe_load(git(repo, "show", f"{record.commit}:dvc.lock"))
    train = lock["stages"]["train"]
    assert train["outs"] == [{"path": "model.pt", "hash": "md5", "md5": written.md5, "size": written.size}]
    assert train["params"]["params.yaml"] == {"lr": 0.05}
    assert train["deps"][0]["md5"] == md5_file(repo / "train.py")[0]
    assert (repo / "dvc.lock").read_text() == git(repo, "show", f"{record.commit}:dvc.lock")
    message = git(repo, "show", "-s", "--format=%B", record.commit)
    meta = json.loads(next(line for line in message.splitlines() if line.startswith("expckpt-meta: "))[14:])
    assert (meta["exp"], meta["step"], meta["parent"], meta["metrics"]) == ("run", 0, None, {"acc": 0.5})
    assert torch.equal(
        torch.load(repo / "model.pt", weights_only=True)["model"]["weight"], payload(0)["model"]["weight"]
    )
    check_consistent(repo)


def test_a_chain_records_its_parents_and_only_a_resumed_first_checkpoint_is_a_branch_point(repo: Path) -> None:
    c = committer(repo, "a")
    first = c.publish(write_temp(payload(0), repo / "model.pt"), step=0, metrics={}, live_files={}, parent=None)
    second = c.publish(
        write_temp(payload(1), repo / "model.pt"), step=1, metrics={}, live_files={}, parent=first.commit
    )
    resumed = committer(repo, "b").publish(
        write_temp(payload(2), repo / "model.pt"), step=2, metrics={}, live_files={}, parent=second.commit
    )

    assert (second.parent, second.resumed) == (first.commit, False)
    assert (resumed.parent, resumed.resumed) == (second.commit, True)
    note = SessionNote.read(repo, "model.pt")
    assert note is not None and (note.commit, note.step, note.md5) == (resumed.commit, 2, resumed.outs["model.pt"].md5)
    assert sorted(check_consistent(repo)) == ["a@0", "a@1", "b@2"]


def test_the_note_remembers_the_dvc_exp_apply_it_saw(repo: Path) -> None:
    c = committer(repo)
    first = c.publish(write_temp(payload(0), repo / "model.pt"), step=0, metrics={}, live_files={}, parent=None)
    assert SessionNote.read(repo, "model.pt").applied is None
    run("git", "update-ref", "refs/exps/exec/EXEC_APPLY", first.commit, cwd=repo)

    c.publish(write_temp(payload(1), repo / "model.pt"), step=1, metrics={}, live_files={}, parent=first.commit)

    assert SessionNote.read(repo, "model.pt").applied == first.commit


def test_read_live_files_takes_the_live_dir_and_restore_lock_puts_dvc_lock_back(repo: Path) -> None:
    c = committer(repo)
    (repo / "dvclive" / "plots").mkdir(parents=True)
    (repo / "dvclive" / "metrics.json").write_text('{"step": 0}')
    (repo / "dvclive" / "plots" / "acc.tsv").write_text("step\tacc\n0\t0.5\n")

    live = c.read_live_files()

    assert live == {"dvclive/metrics.json": b'{"step": 0}', "dvclive/plots/acc.tsv": b"step\tacc\n0\t0.5\n"}
    record = c.publish(write_temp(payload(0), repo / "model.pt"), step=0, metrics={}, live_files=live, parent=None)
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    c.restore_lock(record)
    assert (repo / "dvc.lock").read_text() == git(repo, "show", f"{record.commit}:dvc.lock")
