"""Hold DVC's experiment lock on the workspace while a workspace ``dvc exp run`` trains.

DVC releases its repository lock while a stage runs (``unlocked_repo``), so a second ``dvc exp
run`` in the same workspace gets through: it stashes and resets the workspace, sets DVC's
``refs/exps/exec/*`` refs, force-checks-out the files of its own run (params.yaml, dvc.lock and
the checkpoint output) and only then is refused by the stage lock; cleaning up, it removes
``EXEC_BASELINE``, and the first run fails at its end (``'NoneType' object is not
subscriptable``) after publishing every checkpoint. That is DVC's fault: nothing holds the
workspace for the running experiment. expckpt holds it: training takes a read lock on
``workspace`` in DVC's own experiment rwlock (``.dvc/tmp/exps/rwlock``), the lock a new ``dvc exp
run`` (and ``dvc exp run --queue``) takes for writing before it touches anything, so DVC refuses
the second run at once, naming this process. A killed training process leaves its entry behind;
DVC removes entries of dead processes itself.

This is the one place expckpt uses ``dvc.rwlock`` (not a public API); ``tests/test_exprwlock.py``
pins the behaviour relied on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from expckpt.errors import ProjectError
from expckpt.project import Project

__all__ = ["WORKSPACE_LOCK", "hold_workspace"]

WORKSPACE_LOCK = "workspace"
"""The path DVC's workspace queue locks for writing before it stashes the workspace."""


@contextlib.contextmanager
def hold_workspace(project: Project, exp_name: str) -> Iterator[None]:
    """Hold DVC's experiment rwlock on the workspace (nothing for a ``--temp``/queued run,
    whose workspace is a copy); ``ProjectError`` if another process holds it already."""
    if project.workspace.resolve() != project.root.resolve():
        yield
        return
    from dvc.config import Config
    from dvc.fs import localfs
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    tmp_dir = project.root / ".dvc" / "tmp" / "exps"  # dvc.repo.experiments.utils.EXEC_TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        hardlink = bool(Config(dvc_dir=str(project.root / ".dvc")).get("core", {}).get("hardlink_lock", False))
    except Exception:  # an unreadable config: DVC itself refuses to run then
        hardlink = False
    cmd = f"{Path(sys.argv[0]).name if sys.argv and sys.argv[0] else 'python'} (training of `dvc exp run -n {exp_name}`)"
    try:
        held = rwlock(str(tmp_dir), localfs, cmd, [WORKSPACE_LOCK], [], hardlink)
        held.__enter__()
    except LockError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "locked"
        raise ProjectError(
            f"another experiment holds this workspace ({first.strip()} {_blockers(exc)}); wait for it to end"
            " or stop it, then run again", path=project.root,
        ) from exc
    try:
        yield
    finally:
        held.__exit__(None, None, None)


def _blockers(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip().startswith("(PID")]
    return "; ".join(lines)
