"""Issue 22: the traps met porting pytorch/examples' ``mnist/main.py`` by the README alone.

Each test reproduces one of the issue's numbered items against the real library (in process,
on real Git + DVC repositories) or, where only DVC itself shows the trap, through ``dvc exp run``.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from expckpt import Checkpointer, CheckpointLive, ConfigError, TrainingState
from expckpt.errors import MissingCheckpointError
from expckpt.state import seeding
from expckpt.serialize.checkpoint_file import load_checkpoint, write_temp
from conftest import kill_group, make_project, run
from faultkit import Background
from faultkit import dvc_env as faultkit_env
from integrationkit import make_example_project
from expckpt.store.gitstore import GitStore
from expckpt.store.headstate import detached_head_note
from expckpt.store.project import Project
from expckpt.ops.reset import reset_workspace
from expckpt.store.session import SessionNote
from inprocess import dvc_env, new_repo, new_state, refs, train, train_step


def step_lr(gamma: float) -> TrainingState:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    return TrainingState(
        model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
    )


# 9. messages ---------------------------------------------------------------------------------------
def test_a_changed_gamma_is_refused_without_blaming_epochs_or_batches(tmp_path: Path) -> None:
    """``-S gamma=0.5`` on a resume: the hint names the setting, not the epochs or the batch count."""
    written = write_temp(step_lr(0.7).capture(), tmp_path / "model.pt")
    written.publish()
    payload = load_checkpoint(tmp_path / "model.pt")
    with pytest.raises(ConfigError) as refused:
        step_lr(0.5).restore(payload)
    assert str(refused.value) == (
        "the LR scheduler (StepLR) has gamma 0.5 now but 0.7 in the checkpoint; a restored schedule cannot"
        " change shape: keep gamma 0.7 to resume from this checkpoint, or start over with `expckpt reset`"
    )


# 2. saved generators that were never seeded --------------------------------------------------------
def run_steps(repo: Path, exp: str, steps: int) -> list[str]:
    """Train ``steps`` steps as a fresh ``dvc exp run -n exp`` would; return what expckpt said."""
    state = TrainingState(model=torch.nn.Linear(4, 3))
    state = TrainingState(model=state.model, optimizer=torch.optim.SGD(state.model.parameters(), lr=0.1))
    said: list[str] = []
    ckpt = Checkpointer.from_env(config={}, env=dvc_env(repo, exp))
    ckpt.echo = said.append
    ckpt.restore(state)
    for step in range(state.step + 1, steps):
        ckpt.save(state, step, train_step(state, step))
    ckpt.close(state)
    return said


def test_generators_never_seeded_are_named_once_at_the_first_save(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytorch/examples seeds only torch: its checkpoints carry OS-entropy Python/NumPy states."""
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    monkeypatch.setattr(seeding, "AT_IMPORT", seeding.SeedWatch())  # the script has just imported expckpt
    torch.manual_seed(1)
    said = run_steps(repo, "only-torch", 3)
    notes = [line for line in said if line.startswith("expckpt: note:")]
    assert notes == [
        "expckpt: note: Python's random and NumPy's global generator were never seeded (nor used) in this run;"
        " the checkpoint saves their state drawn from OS entropy, so two runs with the same seed and params"
        " write different checkpoint files (no shared cache object); call random.seed(seed) and"
        " numpy.random.seed(seed) with your seed to make them byte-identical"
    ], said
    first_save = next(i for i, line in enumerate(said) if line.startswith("Checkpoint experiment 'only-torch@0'"))
    assert said.index(notes[0]) < first_save, said

    monkeypatch.chdir(new_repo(tmp_path_factory, tmp_path / "p2"))  # each a fresh start
    monkeypatch.setattr(seeding, "AT_IMPORT", seeding.SeedWatch())
    random.seed(1)  # the script seeds Python's random too; NumPy is left out
    notes = [line for line in run_steps(Path.cwd(), "python-seeded", 2) if line.startswith("expckpt: note:")]
    assert len(notes) == 1 and notes[0].startswith("expckpt: note: NumPy's global generator was never seeded"), notes
    assert "call numpy.random.seed(seed) with your seed" in notes[0]

    monkeypatch.chdir(new_repo(tmp_path_factory, tmp_path / "p3"))
    monkeypatch.setattr(seeding, "AT_IMPORT", seeding.SeedWatch())
    random.seed(2)  # (seed 1 again would give the state the watch started from)
    np.random.seed(2)
    assert not [line for line in run_steps(Path.cwd(), "all-seeded", 2) if line.startswith("expckpt: note:")]


# 6. divergence detection: the usual loss names, and "off" said once per experiment -----------------
def saves(repo: Path, exp: str, metrics: list[dict[str, float]], config: dict | None = None) -> list[str]:
    """Restore, then save one step per ``metrics`` entry as ``dvc exp run -n exp`` would; the lines said."""
    state = new_state(0)
    said: list[str] = []
    ckpt = Checkpointer.from_env(config=config or {}, env=dvc_env(repo, exp))
    ckpt.echo = said.append
    ckpt.restore(state)
    for values in metrics:
        ckpt.save(state, state.step + 1, values)
    ckpt.close(state)
    return said


@pytest.mark.parametrize("name", ["train_loss", "train/loss", "eval_loss", "val_loss"])
def test_a_framework_loss_name_is_watched_for_divergence(
    name: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning logs ``train_loss``, the HF Trainer ``eval_loss``: no "off" line, and a rise is seen."""
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    said = saves(repo, "lit", [{name: v, "acc": 0.5} for v in (1.0, 2.0, 3.0, 4.0)])
    assert not [line for line in said if "divergence detection is off" in line], said
    assert f"expckpt: warning: step 3: {name} rose 3 steps in a row since step 1: diverging" in said, said


def test_divergence_off_is_said_once_per_experiment_not_at_each_resume(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    first = saves(repo, "a", [{"acc": 0.5}, {"acc": 0.6}])
    resumed = saves(repo, "a", [{"acc": 0.7}])  # `dvc exp run` again: goes on from a@1
    again = saves(repo, "a", [{"acc": 0.8}])
    assert sum("divergence detection is off" in line for line in first) == 1, first
    assert any(line.startswith("Resuming from model.pt (a@1)") for line in resumed), resumed
    assert not [line for line in resumed + again if "divergence detection is off" in line], resumed + again


# 7. argparse scripts: params without a `checkpoint` section ----------------------------------------
@pytest.mark.parametrize(
    ("params_yaml", "given", "warned"),
    [
        ("epochs: 2\ncheckpoint:\n  keep_last: 1\n", {"epochs": 2}, True),  # vars(args): the section is lost
        ("epochs: 2\ncheckpoint:\n  keep_last: 1\n", {"epochs": 2, "checkpoint": {"keep_last": 1}}, False),
        ("epochs: 2\n", {"epochs": 2}, False),  # nothing to lose
    ],
)
def test_params_without_the_checkpoint_section_params_yaml_has_is_one_warning(
    params_yaml: str,
    given: dict,
    warned: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(params_yaml)
    with CheckpointLive.from_env(TrainingState(model=torch.nn.Linear(2, 1)), given) as live:
        for _ in live.steps(1):
            live.next_step()
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "no 'checkpoint' section" in line]
    assert lines == (
        [
            "expckpt: warning: the params given to CheckpointLive.from_env have no 'checkpoint' section but"
            " params.yaml has one, so its settings are not used; pass them too, e.g."
            " {**vars(args), 'checkpoint': yaml.safe_load(open('params.yaml'))['checkpoint']}"
        ]
        if warned
        else []
    )


# 1. `expckpt reset`, then `dvc exp apply`: the apply wins ------------------------------------------
def reset(repo: Path) -> None:
    reset_workspace(Project.discover(env={}))
    assert SessionNote.was_reset(repo, "model.pt")


def test_an_apply_after_a_reset_wins(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``expckpt reset && dvc exp apply a@2 && dvc exp run -n h`` used to train h from scratch."""
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    train(repo, "a", 5)
    reset(repo)
    saves(repo, "failed", [])  # a run that fails before training leaves the reset mark in place
    assert SessionNote.was_reset(repo, "model.pt")
    run("dvc", "exp", "apply", "a@2", cwd=repo)
    said = saves(repo, "h", [{"loss": 1.0}])
    applied = refs(repo)["a@2"]
    assert said[:2] == [
        f"expckpt: model.pt is a@2 ({applied[:7]}), applied after `expckpt reset`; the apply wins: resuming"
        " from it (`expckpt reset` again to start from scratch)",
        "Resuming from model.pt (a@2): 3 steps done",
    ], said
    assert "h@3" in refs(repo) and "h@0" not in refs(repo)


def test_an_apply_after_a_reset_whose_checkpoint_is_lost_is_refused_not_a_fresh_start(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``expckpt reset && dvc exp apply a@2``, then model.pt and its cache object gone: the apply
    came last, so the run refuses the lost checkpoint instead of training from step 0."""
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    train(repo, "a", 5)
    reset(repo)
    run("dvc", "exp", "apply", "a@2", cwd=repo)
    md5 = hashlib.md5((repo / "model.pt").read_bytes()).hexdigest()
    (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    (repo / "model.pt").unlink()
    with pytest.raises(MissingCheckpointError, match=r"model.pt should be checkpoint a@2 "):
        saves(repo, "h", [{"loss": 1.0}])
    assert not any(name.startswith("h@") for name in refs(repo))


def test_a_reset_after_an_apply_still_starts_from_scratch(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    train(repo, "a", 5)
    run("dvc", "exp", "apply", "a@2", cwd=repo)
    reset(repo)
    run("dvc", "checkout", "--force", cwd=repo)  # what `dvc exp run` does first: model.pt is a@2 again
    assert (repo / "model.pt").exists()
    said = saves(repo, "h", [{"loss": 1.0}])
    assert said[0] == "expckpt: starting from scratch (expckpt reset); ignoring model.pt as DVC checked it out", said
    assert "h@0" in refs(repo)


# 8. Ctrl+C under Lightning ends like the plain loop ------------------------------------------------
STOPPED = re.compile(
    r"^expckpt: stopped by SIGINT; last complete checkpoint: (?P<name>lit@\d+) \((?P<sha>[0-9a-f]{7})\)$", re.M
)


@pytest.mark.slow
def test_ctrl_c_under_lightning_names_the_last_complete_checkpoint_and_exits_130(tmp_path: Path) -> None:
    project = make_example_project(tmp_path / "lit", "lightning", epochs=1000, checkpoint={"keep_last": 2})
    bg = Background.start(["python", "train.py"], project, faultkit_env(project, "lit"))
    bg.wait_for("Checkpoint experiment 'lit@1'", timeout=300)

    bg.proc.send_signal(signal.SIGINT)

    assert bg.wait(120) == 130, bg.text()
    assert "Detected KeyboardInterrupt" not in bg.text() and "Traceback" not in bg.text(), bg.text()
    stopped = STOPPED.search(bg.stderr)
    assert stopped, bg.text()
    newest = max(int(n.rsplit("@", 1)[1]) for n in refs(project) if n.startswith("lit@"))
    assert stopped["name"] == f"lit@{newest}" and refs(project)[stopped["name"]].startswith(stopped["sha"])


# 5. HEAD left detached by a killed run --------------------------------------------------------------
def test_detached_head_note_reads_the_reflog_against_this_runs_exec_merge(tmp_path: Path) -> None:
    """Real Git: HEAD detached before EXEC_MERGE was written (a killed run) vs by this run."""
    repo = tmp_path / "r"
    repo.mkdir()
    run("git", "init", "-q", "-b", "trunk", cwd=repo)
    run("git", "commit", "-q", "--allow-empty", "-m", "base", cwd=repo)
    base = run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    git_dir, exec_merge = repo / ".git", repo / ".git" / "refs" / "exps" / "exec" / "EXEC_MERGE"
    tips = lambda: GitStore.open(repo).branch_and_tag_tips()  # noqa: E731
    assert detached_head_note(git_dir, base, tips()) is None  # not inside a `dvc exp run`

    run("git", "checkout", "-q", "--detach", cwd=repo)  # the killed run detached HEAD ...
    run("git", "update-ref", "refs/exps/exec/EXEC_MERGE", base, cwd=repo)  # ... and this one found it so
    os.utime(exec_merge, (time.time() + 5, time.time() + 5))
    assert detached_head_note(git_dir, base, tips()) == (
        f"expckpt: note: HEAD was already detached at {base[:7]} when this run began (a `dvc exp run` killed"
        " earlier leaves it so), and DVC leaves it detached after this run too; `git checkout trunk` puts it back"
    )
    os.utime(exec_merge, (time.time() - 5, time.time() - 5))  # this run detached HEAD itself
    assert detached_head_note(git_dir, base, tips()) is None


@pytest.mark.slow
def test_after_a_killed_run_the_next_run_names_the_users_branch(tmp_path: Path) -> None:
    """``git init`` made ``master`` (here: ``trunk``); the README said ``git checkout main``."""
    project = make_project(tmp_path / "p", epochs=2)
    run("git", "branch", "-m", "trunk", cwd=project)
    base = run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("epochs: 2", "epochs: 50"))
    proc = subprocess.Popen(
        ["dvc", "exp", "run", "-n", "k"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while "k@0" not in refs(project) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "k@0" in refs(project)
    finally:
        kill_group(proc.pid)
        proc.wait()
    assert run("git", "branch", "--show-current", cwd=project).stdout.strip() == ""  # DVC left HEAD detached

    after = run("dvc", "exp", "run", "-n", "b", "-S", "epochs=2", cwd=project)  # nothing left to train
    assert (
        f"expckpt: note: HEAD was already detached at {base[:7]} when this run began (a `dvc exp run` killed"
        " earlier leaves it so), and DVC leaves it detached after this run too; `git checkout trunk` puts it"
        " back"
    ) in after.stdout, after.stdout
    run("git", "checkout", "-q", "trunk", cwd=project)
    again = run("dvc", "exp", "run", "-n", "c", cwd=project)
    assert "HEAD was already detached" not in again.stdout, again.stdout
    assert run("git", "branch", "--show-current", cwd=project).stdout.strip() == "trunk"


# 4. steps trained outside DVC, then `dvc exp run` ----------------------------------------------------
def test_a_step_trained_outside_dvc_and_replaced_by_dvc_is_named(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python main.py --epochs 3`` after ``b@1``; ``dvc exp run`` then checked ``b@1`` out over step 2."""
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    train(repo, "b", 2)
    outside = Checkpointer.from_env(config={}, env={})  # python train.py: no DVC variables
    state = new_state(0)
    outside.restore(state)
    outside.save(state, 2, train_step(state, 2))
    outside.close(state)
    run("dvc", "checkout", "--force", cwd=repo)  # how `dvc exp run` begins: dvc.lock's model.pt, b@1's

    said = saves(repo, "c", [])
    assert said[-1] == (
        "expckpt: warning: model.pt held step 2, trained outside `dvc exp run` (no checkpoint experiment was made"
        " of it); DVC checked out b@1 over it before this run started, so training goes on from step 2 and step 2"
        " is trained again (run training inside `dvc exp run` to keep every step)"
    ), said
    assert "Resuming from model.pt (b@1): 2 steps done" in said
    assert not [line for line in saves(repo, "c", []) if "outside" in line], "said once"


def test_a_step_trained_outside_dvc_still_in_place_is_resumed_silently(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo(tmp_path_factory, tmp_path / "p")
    monkeypatch.chdir(repo)
    train(repo, "b", 2)
    outside = Checkpointer.from_env(config={}, env={})
    state = new_state(0)
    outside.restore(state)
    outside.save(state, 2, train_step(state, 2))
    outside.close(state)
    said = saves(repo, "c", [])
    assert "Resuming from model.pt: 3 steps done" in said and not [line for line in said if "outside" in line], said


@pytest.mark.slow
def test_dvc_exp_run_after_training_outside_dvc_names_the_lost_step(tmp_path: Path) -> None:
    """The issue's route through the real ``dvc exp run`` and ``python train.py``."""
    project = make_project(tmp_path / "p", epochs=2)
    run("dvc", "exp", "run", "-n", "b", cwd=project)
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 2", "epochs: 3"))
    assert "epoch 2:" in run("python", "train.py", cwd=project).stdout  # outside DVC: step 2 into model.pt
    out = run("dvc", "exp", "run", "-S", "epochs=3", cwd=project).stdout
    assert "Resuming from model.pt (b@1): 2 steps done" in out, out
    assert (
        "expckpt: warning: model.pt held step 2, trained outside `dvc exp run` (no checkpoint experiment was"
        " made of it); DVC checked out b@1 over it before this run started"
    ) in out, out
