"""Ctrl+C and SIGTERM during training (issue: crash-safe, tamper-safe checkpoints).

train.py runs directly with the variables ``dvc exp run`` sets, so a signal reaches only it.
The first signal stops training, after finishing a checkpoint in progress, exiting 128 + signal
number with one line naming the last complete checkpoint; a second signal exits at once, and
the repository is still consistent. ``EXPCKPT_PAUSE_AT`` holds a checkpoint half written so the
signal lands there every time.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from expckpt.faults import PAUSE_MESSAGE
from faultkit import Background, clone, dvc_env, set_param, train
from oracle import check_consistent, locked_model, md5_of, resume_problems, steps

STOPPED = re.compile(
    r"^expckpt: stopped by (?P<sig>SIG\w+); last complete checkpoint: (?P<name>\S+) \((?P<sha>[0-9a-f]{7})\)$", re.M
)


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A fresh project with more epochs than any test lets it reach."""
    project = clone(tmp_path_factory, tmp_path / "p")
    set_param(project, "epochs", 100)
    return project


def start(project: Path, **extra: str) -> Background:
    return Background.start(["python", "train.py"], project, dvc_env(project, "sig", **extra))


def assert_names_last_checkpoint(project: Path, stderr: str, signame: str) -> int:
    """The stop line names the newest checkpoint ref; return its step."""
    match = STOPPED.search(stderr)
    assert match and match["sig"] == signame, stderr
    done = steps(project, "sig")
    assert done and match["name"] == f"sig@{done[-1]}", f"{match['name']} is not the last of {done}"
    refs = check_consistent(project)
    assert refs[match["name"]].commit.startswith(match["sha"])
    md5, _ = locked_model(project, refs[match["name"]].commit)
    assert md5_of(project / "model.pt") == md5, "model.pt is that checkpoint"
    return done[-1]


@pytest.mark.slow
def test_signal_during_training_stops_after_a_complete_checkpoint(project: Path) -> None:
    """SIGINT (Ctrl+C) while training: exit 130. (SIGTERM, 143, is sent in the next test.)"""
    signum, code = signal.SIGINT, 130
    bg = start(project)
    bg.wait_for("Checkpoint experiment 'sig@1'")

    bg.proc.send_signal(signum)

    assert bg.wait(120) == code, bg.stderr
    assert "Traceback" not in bg.stderr
    assert_names_last_checkpoint(project, bg.stderr, signal.Signals(signum).name)


@pytest.mark.slow
def test_signal_while_a_checkpoint_is_written_finishes_it(project: Path) -> None:
    # SIGTERM pauses by default (tests/test_pause.py); taken off pause_signals, it stops as SIGINT does
    params = yaml.safe_load((project / "params.yaml").read_text())
    set_param(project, "checkpoint", {**params["checkpoint"], "pause_signals": ["SIGUSR1"]})
    bg = start(project, EXPCKPT_PAUSE_AT="after-commit:1", EXPCKPT_PAUSE_SECONDS="3")
    bg.wait_for(PAUSE_MESSAGE)  # sig@1: file, cache object and commit written; its ref not yet

    bg.proc.send_signal(signal.SIGTERM)

    assert bg.wait(120) == 143, bg.stderr
    assert "expckpt: SIGTERM: finishing the checkpoint in progress, then stopping" in bg.stderr
    assert assert_names_last_checkpoint(project, bg.stderr, "SIGTERM") == 1
    assert "epoch 2:" not in bg.stdout, "training went on after the signal"


@pytest.mark.slow
def test_second_signal_exits_at_once_and_leaves_the_repo_consistent(project: Path) -> None:
    bg = start(project, EXPCKPT_PAUSE_AT="after-commit:1", EXPCKPT_PAUSE_SECONDS="120")
    bg.wait_for(PAUSE_MESSAGE)
    bg.proc.send_signal(signal.SIGINT)
    bg.wait_for("finishing the checkpoint in progress")
    sent = time.monotonic()

    bg.proc.send_signal(signal.SIGINT)

    assert bg.wait(60) == 130
    assert time.monotonic() - sent < 30, "the second signal did not exit at once"
    assert re.search(
        r"^expckpt: second SIGINT: exiting now; last complete checkpoint: sig@0 \([0-9a-f]{7}\)$", bg.stderr, re.M
    ), bg.stderr
    assert steps(project, "sig") == [0], "the interrupted checkpoint has no ref"
    check_consistent(project)  # every ref names a commit whose object is in the cache

    set_param(project, "epochs", 2)
    resumed = train(project, "sig")

    assert "did not finish; resuming from the last complete one, sig@0" in resumed.stdout
    assert resume_problems(resumed.stdout, "sig", 0, 2) == []
    assert steps(project, "sig") == [0, 1]
    check_consistent(project)


@pytest.mark.slow
def test_signal_in_async_mode_waits_for_background_checkpoints(project: Path) -> None:
    """The writer thread is held inside sig@1; the stop line must name the checkpoint that is
    really last once everything handed to the writer is published."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    set_param(project, "checkpoint", {**params["checkpoint"], "async": True})
    bg = start(project, EXPCKPT_PAUSE_AT="after-commit:1", EXPCKPT_PAUSE_SECONDS="4")
    bg.wait_for(PAUSE_MESSAGE)

    bg.proc.send_signal(signal.SIGINT)

    assert bg.wait(120) == 130, bg.stderr
    assert assert_names_last_checkpoint(project, bg.stderr, "SIGINT") >= 1
