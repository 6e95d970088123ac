"""Training outlives its ``dvc exp run`` (issue 21 item 7): the dvc process alone is SIGKILLed;
``expckpt show``/``list`` name the orphaned training with its pid, and the training saves the
step in hand, says so in one line (also in its run file) and stops."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from expckpt.faults import PAUSE_MESSAGE
from expckpt.train.orphan import orphan_lines
from faultkit import Background, clone, run
from oracle import check_consistent, steps


def training_pid(project: Path) -> int:
    (path,) = (project / ".dvc" / "tmp" / "expckpt" / "runs").glob("*.json")
    return json.loads(path.read_text())["pid"]


@pytest.mark.slow
def test_killed_dvc_exp_run_leaves_no_training_running_on(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    project = clone(tmp_path_factory, tmp_path / "p")
    bg = Background.start(
        ["dvc", "exp", "run", "-n", "orphan", "-S", "epochs=1000", "-S", "checkpoint.every=5"],
        project,
        {"PYTHONUNBUFFERED": "1", "EXPCKPT_PAUSE_AT": "after-note:4", "EXPCKPT_PAUSE_SECONDS": "12"},
        group=True,
    )
    try:
        bg.wait_for(PAUSE_MESSAGE, timeout=300)
        pid = training_pid(project)
        os.kill(bg.proc.pid, signal.SIGKILL)  # the dvc process alone, as an OOM kill would
        bg.proc.wait(30)

        lines = orphan_lines(project)
        shown = run("expckpt", "show", cwd=project)
        listed = run("expckpt", "list", cwd=project)

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.5)
        assert not os.path.exists(f"/proc/{pid}"), "the orphaned training must stop by itself"
    finally:
        with_group = bg.proc.pid
        try:
            os.killpg(with_group, signal.SIGKILL)
        except ProcessLookupError:
            pass

    expected = (
        f"expckpt: warning: training of 'orphan' (pid {pid}) is still running, orphaned: its `dvc exp run`"
        f" (pid {bg.proc.pid}) is gone; it stops at its next step, or stop it with `kill {pid}`"
    )
    assert lines == [expected]
    assert expected in shown.stderr and expected in listed.stderr
    said = [line for line in bg.text().splitlines() if "is gone; saved step" in line]
    assert said == [
        f"expckpt: the `dvc exp run` that started this training (pid {bg.proc.pid}) is gone; saved step 5"
        f" and stopped (pid {pid}); run `dvc exp run` again to go on from it"
    ]
    assert steps(project, "orphan") == [4, 5], "step 5 saved although checkpoint.every is 5, then stopped"
    check_consistent(project)
    assert orphan_lines(project) == []
