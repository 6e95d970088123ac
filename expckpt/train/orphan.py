"""Training that outlives its ``dvc exp run``.

When ``dvc exp run`` itself is killed (SIGKILL of the dvc process alone, an OOM kill), the stage
command runs on as an orphan: it keeps training and publishing, holds the workspace and nobody
sees it. ``OrphanWatch`` finds the ``dvc exp run`` that started this process (the nearest
ancestor running ``dvc exp run``) and, at each completed step, asks whether it is still there.
When it is gone, ``Checkpointer.save`` saves the step in hand whatever the save interval, says so
in one line (printed and written to this run's file, since the terminal may be gone) and stops
training (``Decision.stop == "orphaned"``).

Each training inside ``dvc exp run`` keeps a run file, ``.dvc/tmp/expckpt/runs/<pid>.json``, from
its first step to ``close``; ``expckpt show`` and ``list`` read them (``orphan_lines``) and name a
live training whose ``dvc exp run`` is gone, with its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from expckpt.serialize.atomic import atomic_write_bytes
from expckpt.store.exprwlock import dvc_exp_run_parent

__all__ = ["OrphanWatch", "orphan_lines"]


def _runs_dir(workspace: Path) -> Path:
    return workspace / ".dvc" / "tmp" / "expckpt" / "runs"


def _alive(pid: int, created: float) -> bool:
    """``pid`` is the same process as when noted (not a reused pid) and not a zombie."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class OrphanWatch:
    """Is the ``dvc exp run`` that started this training still alive? (No I/O until ``gone``.)"""

    def __init__(self, workspace: Path | None, exp: str | None) -> None:
        self.workspace = workspace
        self.exp = exp
        self._parent: tuple[int, float] | None = None
        self._looked = False
        self._said = False

    def _find(self) -> None:
        self._looked = True
        self._parent = dvc_exp_run_parent()
        if self._parent is not None:
            self._write({})

    def _write(self, extra: dict[str, object]) -> None:
        assert self.workspace is not None and self._parent is not None
        me = os.getpid()
        import psutil

        record = {
            "pid": me,
            "created": psutil.Process(me).create_time(),
            "exp": self.exp,
            "dvc_pid": self._parent[0],
            "dvc_created": self._parent[1],
            **extra,
        }
        path = _runs_dir(self.workspace) / f"{me}.json"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(record).encode(), durable=False)

    def gone(self) -> bool:
        """True once this training's ``dvc exp run`` has gone (always False outside one)."""
        if self.workspace is None:
            return False
        if not self._looked:
            self._find()
        return self._parent is not None and not _alive(*self._parent)

    def say(self, echo: Callable[[str], None], step: int) -> None:
        """The one line, once: printed and written to this run's file."""
        if self._said or self._parent is None:
            return
        self._said = True
        line = (
            f"expckpt: the `dvc exp run` that started this training (pid {self._parent[0]}) is gone; saved"
            f" step {step} and stopped (pid {os.getpid()}); run `dvc exp run` again to go on from it"
        )
        echo(line)
        self._write({"orphaned": line, "orphaned_at": time.time()})

    def forget(self) -> None:
        """End of training: remove the run file."""
        if self.workspace is not None and self._parent is not None:
            with contextlib.suppress(OSError):
                (_runs_dir(self.workspace) / f"{os.getpid()}.json").unlink()


def orphan_lines(workspace: Path) -> list[str]:
    """One warning per training in this workspace that is alive while its ``dvc exp run`` is not."""
    lines = []
    for path in sorted(_runs_dir(workspace).glob("*.json")):
        try:
            run = json.loads(path.read_text())
            pid, created = int(run["pid"]), float(run["created"])
            dvc_pid, dvc_created = int(run["dvc_pid"]), float(run["dvc_created"])
            exp = str(run.get("exp"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid, created):
            with contextlib.suppress(OSError):
                path.unlink()  # a training that ended without close
            continue
        if not _alive(dvc_pid, dvc_created):
            lines.append(
                f"expckpt: warning: training of {exp!r} (pid {pid}) is still running, orphaned: its"
                f" `dvc exp run` (pid {dvc_pid}) is gone; it stops at its next step, or stop it with `kill {pid}`"
            )
    return lines
