"""A checkpoint writer stopped (SIGSTOP, Ctrl+Z) while it holds DVC's state database (issue 21
item 8): ``expckpt gc --dry-run`` waited on it without a word. Now it says within two seconds
whom it waits for, and gives up in bounded time; the other read-only commands answer at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from faultkit import Background, run, trained

HOLDER = """
import sqlite3, sys, time
from pathlib import Path
from dvc.repo import Repo
from expckpt.store.gclock import gc_lock

root = Path(sys.argv[1])
db = Path(Repo(str(root)).state.hashes.directory) / "cache.db"
with gc_lock(root / ".git", exclusive=False):  # as a publishing checkpoint holds it
    con = sqlite3.connect(db, timeout=1)
    con.execute("BEGIN EXCLUSIVE")  # as LockBuilder.remember does, briefly, while DVC saves a hash
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    return trained(tmp_path_factory, tmp_path / "p")


def test_read_only_commands_name_a_stopped_writer_and_give_up_in_time(project: Path) -> None:
    holder = Background.start(["python", "-c", HOLDER, str(project)], project, {})
    results = {}
    try:
        holder.wait_for("held", timeout=120)
        os.kill(holder.proc.pid, signal.SIGSTOP)
        for command in (["gc", "-w", "--dry-run"], ["show"], ["list"], ["verify", "--all"], ["report"]):
            started = time.monotonic()
            result = run("expckpt", *command, cwd=project, check=False, env={"EXPCKPT_READ_WAIT": "6"}, timeout=60)
            results[command[0]] = (result, time.monotonic() - started)
    finally:
        os.kill(holder.proc.pid, signal.SIGCONT)
        holder.proc.kill()
        holder.wait()

    pid = holder.proc.pid
    for name, (result, took) in results.items():
        assert took < 30, (name, took)
        if result.returncode == 0:
            continue
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 2, (name, result)
        assert lines[0].startswith(
            f"expckpt: expckpt {name} is waiting for DVC's state database or a lock; held by: pid {pid} (python -c "
        ), lines[0]
        assert lines[0].endswith(
            f"a checkpoint writer, STOPPED (SIGSTOP or Ctrl+Z): resume it with `kill -CONT {pid}`"
            " (or `fg` in its terminal)"
        )
        assert lines[1].startswith(
            f"expckpt: error: expckpt {name} gave up after 6 s (EXPCKPT_READ_WAIT) waiting for: pid {pid} "
        ) and lines[1].endswith("; nothing was changed")
        assert took > 5
    assert results["gc"][0].returncode == 1, "gc --dry-run asks DVC, which waits on the stopped writer's database"
