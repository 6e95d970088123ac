"""Where a run resumes: the rules of ``expckpt.train.resume``, one test each, in process; and exact
resume through the real ``dvc exp run`` (slow).

The rule tests drive a real ``Checkpointer`` on a real temporary Git + DVC repository
(``inprocess``). Two runs with the same seed write byte-identical files, as real runs of the
same experiment do; several rules are about which of such twins a run goes on from.

End to end: training E epochs straight and training k epochs, stopping, then going on to E
must give bitwise-identical weights and identical metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_project, run
from expckpt import load_checkpoint
from expckpt.serialize.atomic import md5_file
from expckpt.store.project import Project
from expckpt.store.refs import EXEC_APPLY
from expckpt.ops.reset import reset_workspace
from expckpt.train.resume import Resumed
from expckpt.store.session import SessionNote
from inprocess import baseline, checkpointer, crash_at, new_repo, new_state, refs, train, train_step


# --------------------------------------------------------------------------- the rules, in process


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(project)
    return project


def restore(project: Path, exp: str) -> Resumed | None:
    """What a new run ``exp`` in ``project`` resumes from."""
    return checkpointer(project, exp).restore(new_state())


def resumed_name(project: Path, exp: str) -> str | None:
    resumed = restore(project, exp)
    return resumed.record.name if resumed and resumed.record else None


def model_md5(project: Path) -> str:
    return md5_file(project / "model.pt")[0]


def locked_md5(project: Path, commit: str) -> str:
    import yaml

    lock = yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=project).stdout)
    return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "model.pt")


def reset(project: Path) -> None:
    """``expckpt reset``: the next run starts from scratch."""
    reset_workspace(Project.discover(project, env={}))


def apply(project: Path, name: str) -> None:
    """What ``dvc exp apply <name>`` does to the checkpoint: EXEC_APPLY and the file, rewritten."""
    commit = refs(project)[name]
    run("git", "update-ref", EXEC_APPLY, commit, cwd=project)
    rewrite(project, cache_object(project, locked_md5(project, commit)))


def cache_object(project: Path, md5: str) -> Path:
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def rewrite(project: Path, source: Path | None = None) -> None:
    """A new file with the same (or ``source``'s) bytes, as DVC's forced checkout makes one."""
    data = (source or project / "model.pt").read_bytes()
    (project / "model.pt").unlink()
    (project / "model.pt").write_bytes(data)


def test_rule1_the_file_of_a_published_checkpoint_resumes_from_it(repo: Path) -> None:
    train(repo, "a", 2)
    state = new_state()
    ckpt = checkpointer(repo, "b")

    resumed = ckpt.restore(state)

    assert resumed is not None and resumed.record is not None
    assert (resumed.record.name, resumed.step, resumed.rolled_back) == ("a@1", 1, False)
    assert state.step == 1
    ckpt.save(state, 2, train_step(state, 2))
    assert ckpt.last_record is not None and ckpt.last_record.name == "b@2"
    assert ckpt.last_record.parent == refs(repo)["a@1"], "the new chain's parent is the checkpoint resumed from"


def test_rule1_twins_the_workspace_own_last_one_wins_while_the_file_is_untouched(repo: Path) -> None:
    train(repo, "a", 3)
    apply(repo, "a@1")
    reset(repo)
    train(repo, "b", 2)
    assert model_md5(repo) == locked_md5(repo, refs(repo)["a@1"]), "precondition: b@1 and a@1 are twins"

    assert resumed_name(repo, "c") == "b@1"


def test_rule1_twins_a_new_dvc_exp_apply_wins(repo: Path) -> None:
    train(repo, "a", 3)
    reset(repo)
    train(repo, "b", 2)

    apply(repo, "a@1")  # the user picks a@1, a twin of the workspace's b@1

    assert resumed_name(repo, "c") == "a@1"


def test_rule1_twins_an_apply_seen_before_the_last_checkpoint_is_not_a_new_choice(repo: Path) -> None:
    """DVC keeps EXEC_APPLY until HEAD moves; `dvc exp run` rewrites the file from dvc.lock."""
    train(repo, "a", 3)
    apply(repo, "a@1")
    reset(repo)
    train(repo, "b", 2)  # b@1: a twin of a@1, which EXEC_APPLY still names

    rewrite(repo)

    assert resumed_name(repo, "c") == "b@1"


def test_rule1_twins_applying_the_same_checkpoint_again_is_a_new_choice(repo: Path) -> None:
    train(repo, "a", 3)
    reset(repo)
    train(repo, "c", 2)  # c@1: a newer twin of a@1
    apply(repo, "a@1")
    train(repo, "b", 3)  # goes on from a@1: b@2; the note has seen EXEC_APPLY = a@1
    assert refs(repo).keys() >= {"b@2"}

    apply(repo, "a@1")  # the same choice once more

    assert resumed_name(repo, "d") == "a@1"


def test_rule2_a_file_expckpt_never_wrote_is_used_as_it_is(repo: Path) -> None:
    train(repo, "a", 2)
    own = new_state(seed=7)
    own.step = 4
    torch.save(own.capture(), repo / "model.pt")
    state = new_state()

    resumed = checkpointer(repo, "b").restore(state)

    assert resumed is not None and resumed.record is None and not resumed.rolled_back
    assert resumed.step == 4 and state.step == 4
    assert torch.equal(state.model.weight, own.model.weight)


def test_rule3_an_unfinished_checkpoint_rolls_back_to_the_last_complete_one(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with crash_at("after-lock", 1):
        train(repo, "b", 3)
    assert sorted(refs(repo)) == ["b@0"]
    unfinished = model_md5(repo)

    resumed = restore(repo, "b")

    assert resumed is not None and resumed.record is not None
    assert (resumed.record.name, resumed.step, resumed.rolled_back) == ("b@0", 0, True)
    assert model_md5(repo) == locked_md5(repo, refs(repo)["b@0"]) != unfinished
    assert (
        "model.pt was written by a checkpoint that did not finish; resuming from the last complete one, b@0"
        in capsys.readouterr().out
    )


def test_rule3_an_unfinished_first_checkpoint_starts_from_scratch(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with crash_at("after-publish", 0):
        train(repo, "b", 3)
    assert refs(repo) == {} and (repo / "model.pt").is_file()

    resumed = restore(repo, "b")

    assert resumed is None and not (repo / "model.pt").exists()
    assert "none finished before it; starting from scratch" in capsys.readouterr().out


def test_rule0_killed_between_ref_and_note_goes_on_from_its_own_checkpoint(repo: Path) -> None:
    """Regression (#14.11, the flaky SIGKILL test): the note lags the ref; a twin that a stale
    EXEC_APPLY names won, so the run went on from a@1 instead of its own b@1."""
    train(repo, "a", 3)
    apply(repo, "a@1")
    reset(repo)
    with crash_at("after-ref", 1):
        train(repo, "b", 3)
    assert sorted(refs(repo)) == ["a@0", "a@1", "a@2", "b@0", "b@1"]
    assert SessionNote.read(repo, "model.pt").ref.endswith("/b@0"), "precondition: the note was not written"

    resumed = restore(repo, "b")

    assert resumed is not None and resumed.record is not None
    assert (resumed.record.name, resumed.rolled_back) == ("b@1", False)


def test_rule0_unfinished_checkpoint_is_rolled_back_even_when_a_twin_is_complete(repo: Path) -> None:
    """Regression (#14.11): killed after publishing b's step 2 but before its ref, the file held
    a@2's bytes, so the run went on from a@2 ("already has 3 steps") with b@2 never written."""
    train(repo, "a", 3)
    reset(repo)
    with crash_at("after-lock", 2):
        train(repo, "b", 3)
    assert model_md5(repo) == locked_md5(repo, refs(repo)["a@2"]), "precondition: the unfinished file is a@2's twin"

    resumed = restore(repo, "b")

    assert resumed is not None and resumed.record is not None
    assert (resumed.record.name, resumed.step, resumed.rolled_back) == ("b@1", 1, True)
    ckpt, _ = train(repo, "b", 3)
    assert ckpt.last_record is not None and ckpt.last_record.name == "b@2"
    assert ckpt.last_record.parent == refs(repo)["b@1"]
    redone, twin = (load_checkpoint(cache_object(repo, locked_md5(repo, refs(repo)[n]))) for n in ("b@2", "a@2"))
    assert all(torch.equal(redone["model"][k], twin["model"][k]) for k in twin["model"])


def test_rule0_a_mark_of_a_checkpoint_killed_before_its_file_is_dropped(repo: Path) -> None:
    """Killed after the pending mark, before the rename: the file is still the last complete
    checkpoint's, and the mark must not outlive the resume (it would overrule a later choice)."""
    train(repo, "b", 1)
    # (no phase lies between the mark and the rename: the mark is written as the kill leaves it)
    base = baseline(repo)
    SessionNote.mark_pending(repo, "model.pt", f"refs/exps/{base[:2]}/{base[2:]}/b@1", "0" * 32)

    assert resumed_name(repo, "b") == "b@0"
    assert SessionNote.pending(repo, "model.pt") is None


# --------------------------------------------------------------------------- end to end (slow)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def optimizer_state(path: Path) -> dict:
    return load_checkpoint(path)["optimizer"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"
    oa, ob = optimizer_state(a)["state"], optimizer_state(b)["state"]
    for index in oa:
        for name, value in oa[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob[index][name])), f"Adam {name} differs"


def metric_history(project: Path) -> dict[str, list[tuple[str, str]]]:
    """dvclive's per-step values (timestamps dropped: they differ by nature)."""
    history = {}
    for tsv in sorted((project / "dvclive" / "plots" / "metrics").glob("*.tsv")):
        lines = tsv.read_text().splitlines()
        header = lines[0].split("\t")
        keep = [i for i, h in enumerate(header) if h != "timestamp"]
        history[tsv.stem] = [tuple(line.split("\t")[i] for i in keep) for line in lines[1:]]
    return history


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("straight") / "p", epochs=4)
    run("dvc", "exp", "run", "-n", "straight", cwd=project)
    return project


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_stop_after_k_epochs_then_resume_matches_straight_run(straight: Path, tmp_path: Path, k: int) -> None:
    project = make_project(tmp_path / "p", epochs=4)
    first = run("dvc", "exp", "run", "-n", "part", "-S", f"epochs={k}", cwd=project)
    assert f"Checkpoint experiment 'part@{k - 1}'" in first.stdout

    second = run("dvc", "exp", "run", "-n", "rest", "-S", "epochs=4", cwd=project)

    assert f"{k} steps done" in second.stdout
    assert f"epoch {k - 1}:" not in second.stdout, "a finished epoch was trained again"
    assert f"Checkpoint experiment 'rest@{k}'" in second.stdout
    assert_same_weights(project / "model.pt", straight / "model.pt")
    assert json.loads((project / "dvclive/metrics.json").read_text()) == json.loads(
        (straight / "dvclive/metrics.json").read_text()
    )
    assert metric_history(project) == metric_history(straight)


@pytest.mark.slow
def test_finished_run_says_so_and_exits_0(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=2)
    run("dvc", "exp", "run", "-n", "two", cwd=project)
    before = (project / "model.pt").read_bytes()

    again = run("dvc", "exp", "run", "-n", "again", cwd=project)

    assert "already has 2 steps (total 2); nothing to train" in again.stdout
    assert (project / "model.pt").read_bytes() == before


@pytest.mark.slow
def test_python_train_py_outside_dvc_saves_and_resumes(tmp_path: Path) -> None:
    straight = make_project(tmp_path / "straight", epochs=3)
    run("python", "download.py", cwd=straight)
    run("python", "train.py", cwd=straight)

    project = make_project(tmp_path / "p", epochs=1)
    run("python", "download.py", cwd=project)
    first = run("python", "train.py", cwd=project)
    assert "epoch 0:" in first.stdout and (project / "model.pt").is_file()
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 1", "epochs: 3"))

    resumed = run("python", "train.py", cwd=project)

    assert "1 steps done" in resumed.stdout
    assert "epoch 0:" not in resumed.stdout and "epoch 2:" in resumed.stdout
    assert_same_weights(project / "model.pt", straight / "model.pt")
    assert run("git", "for-each-ref", "refs/exps", cwd=project).stdout == "", "no refs outside dvc exp run"


@pytest.mark.slow
def test_missing_params_key_is_one_clear_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", epochs=1)
    params = project / "params.yaml"
    params.write_text("\n".join(line for line in params.read_text().splitlines() if not line.startswith("lr:")))

    result = run("python", "train.py", cwd=project, check=False)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "train.py: error: params.yaml has no key 'lr'; add it at the top level (e.g. `lr: ...`)"
    ]
