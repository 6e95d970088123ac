"""Issue #9 items 1 and 2 through the real ``dvc exp run``: a run never re-points a checkpoint
``<exp>@<step>`` of another run of the same name; it stops with one line instead.

DVC guards only the experiment name ``tut``, not ``tut@N``: after ``dvc exp remove tut``, after
a killed run, or for two queued runs given the same name, DVC starts the run and it is expckpt
that must refuse.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_project, run

pytestmark = pytest.mark.slow

FAST = {"OMP_NUM_THREADS": "1"}


def checkpoints(project: Path, exp: str) -> dict[int, str]:
    """step -> commit of every ``<exp>@<step>`` ref."""
    out = run("git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/", cwd=project).stdout
    found = {}
    for line in out.splitlines():
        ref, sha = line.split()
        base, at, step = ref.rsplit("/", 1)[1].rpartition("@")
        if at and base == exp and step.isdigit():
            found[int(step)] = sha
    return dict(sorted(found.items()))


def parent_of(project: Path, commit: str) -> str | None:
    message = run("git", "show", "-s", "--format=%B", commit, cwd=project).stdout
    line = next(x for x in message.splitlines() if x.startswith("expckpt-meta: "))
    return json.loads(line[len("expckpt-meta: ") :])["parent"]


def lock_lr(project: Path, commit: str) -> float:
    lock = yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=project).stdout)
    return lock["stages"]["train"]["params"]["params.yaml"]["lr"]


def refusal(stderr: str, name: str, commit: str, exp: str, *others: str) -> str:
    """The one ``train.py: error:`` line naming checkpoint ``name`` (and the ``others`` after it in
    the way, with one command that removes them all); no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.splitlines() if x.startswith("train.py: error: ")]
    assert len(lines) == 1, stderr
    if others:
        expected = (
            f"train.py: error: checkpoints '{name}' to '{others[-1]}' already exist ({len(others) + 1} of them;"
            f" {name} is {commit[:7]}, from another run of '{exp}'); run with another name, e.g. dvc exp run"
            f" -n {exp}-2, or remove them first: dvc exp remove {' '.join((name, *others))}"
        )
    else:
        expected = (
            f"train.py: error: checkpoint '{name}' already exists ({commit[:7]}, from another run of '{exp}');"
            f" run with another name, e.g. dvc exp run -n {exp}-2, or remove it first: dvc exp remove {name}"
        )
    assert lines[0] == expected, stderr
    return lines[0]


def dvc_exp_run(project: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run("dvc", "exp", "run", *args, cwd=project, env={**FAST, **env}, check=check)


def test_name_reused_after_exp_remove_and_reset_is_refused(tmp_path: Path) -> None:
    """``dvc exp remove tut; expckpt reset; dvc exp run -n tut`` used to re-point every tut@N."""
    p = make_project(tmp_path / "p", epochs=2)
    dvc_exp_run(p, "-n", "tut")
    before = checkpoints(p, "tut")
    assert sorted(before) == [0, 1]

    run("dvc", "exp", "remove", "tut", cwd=p)
    run("expckpt", "reset", cwd=p)
    again = dvc_exp_run(p, "-n", "tut", check=False)

    assert again.returncode != 0
    refusal(again.stderr, "tut@0", before[0], "tut", "tut@1")
    assert checkpoints(p, "tut") == before, "the earlier run's checkpoints keep their commits"


def test_apply_after_a_killed_run_then_reusing_the_name_is_refused(tmp_path: Path) -> None:
    """A run killed after tut@2; ``dvc exp apply tut@1 && dvc exp run -n tut -S lr=0.01`` used to
    replace the original tut@2 (and tut@3 ...) with checkpoints of another learning rate."""
    p = make_project(tmp_path / "p", epochs=4)
    killed = dvc_exp_run(p, "-n", "tut", check=False, EXPCKPT_CRASH_AT="after-note:2")
    assert killed.returncode != 0
    before = checkpoints(p, "tut")
    assert sorted(before) == [0, 1, 2]

    run("dvc", "exp", "apply", "tut@1", cwd=p)
    again = dvc_exp_run(p, "-n", "tut", "-S", "lr=0.01", check=False)

    assert again.returncode != 0
    refusal(again.stderr, "tut@2", before[2], "tut")
    assert checkpoints(p, "tut") == before

    other = dvc_exp_run(p, "-n", "tut-2", "-S", "lr=0.01")  # the suggested name works
    assert "Checkpoint experiment 'tut-2@2'" in other.stdout, other.stdout
    assert parent_of(p, checkpoints(p, "tut-2")[2]) == before[1], "it continues from tut@1"
    assert checkpoints(p, "tut") == before


def _queue_status(p: Path, names: tuple[str, ...]) -> dict[str, str]:
    """task id -> status of the queued tasks named one of ``names``."""
    rows = run("dvc", "queue", "status", cwd=p).stdout.splitlines()
    return {cells[0]: cells[-1] for cells in (r.split() for r in rows) if len(cells) >= 4 and cells[1] in names}


def _stop_workers(p: Path) -> None:
    run("dvc", "queue", "stop", cwd=p, check=False)
    for pid_file in (p / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline")
        deadline = time.monotonic() + 20
        while pid and time.monotonic() < deadline and cmdline.exists() and b"queue-worker" in cmdline.read_bytes():
            time.sleep(0.5)
        if pid and cmdline.exists() and b"queue-worker" in cmdline.read_bytes():
            os.kill(pid, signal.SIGKILL)


def test_two_queued_runs_with_the_same_name_never_interleave(tmp_path: Path) -> None:
    """``dvc exp run --queue -n q`` twice, ``dvc queue start -j 2``: one run writes the chain
    q@0, q@1 and succeeds; the other refuses at its first checkpoint, and nothing vanishes."""
    p = make_project(tmp_path / "p", epochs=2)
    run("python", "download.py", cwd=p)
    dvc_exp_run(p, "--queue", "-n", "q", "-S", "lr=0.002")
    dvc_exp_run(p, "--queue", "-n", "q", "-S", "lr=0.004")
    with open(tmp_path / "queue.log", "ab") as out:  # not a pipe: the detached workers keep it open
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"], cwd=p, stdout=out, stderr=out, check=True, env={**os.environ, **FAST}
        )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            states = _queue_status(p, ("q",))
            if len(states) == 2 and all(s in ("Success", "Failed") for s in states.values()):
                break
            time.sleep(1)
    finally:
        _stop_workers(p)
    assert sorted(states.values()) == ["Failed", "Success"], states
    failed = next(task for task, state in states.items() if state == "Failed")
    log = run("dvc", "queue", "logs", failed, cwd=p, check=False)
    assert re.search(r"train\.py: error: checkpoints? 'q@", log.stdout + log.stderr), log.stdout + log.stderr
    assert "already exist" in log.stdout + log.stderr and "Traceback" not in log.stdout + log.stderr

    chain = checkpoints(p, "q")
    assert sorted(chain) == [0, 1]
    assert parent_of(p, chain[0]) is None and parent_of(p, chain[1]) == chain[0], "one run's chain"
    lrs = {lock_lr(p, commit) for commit in chain.values()}
    assert len(lrs) == 1 and lrs <= {0.002, 0.004}, f"both checkpoints come from one run: {lrs}"
