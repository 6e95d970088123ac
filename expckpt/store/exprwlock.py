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
import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from expckpt.errors import ProjectError
from expckpt.store.project import Project

__all__ = ["WORKSPACE_LOCK", "dvc_exp_run_parent", "hold_workspace", "is_dvc_exp_run"]

WORKSPACE_LOCK = "workspace"
"""The path DVC's workspace queue locks for writing before it stashes the workspace."""


def is_dvc_exp_run(cmdline: list[str]) -> bool:
    """Whether ``cmdline`` is a ``dvc exp run`` (``dvc`` or ``python -m dvc``)."""
    names = [os.path.basename(a) for a in cmdline]
    launcher = "dvc" in names or any(a == "-m" and b == "dvc" for a, b in itertools.pairwise(cmdline))
    return launcher and "exp" in cmdline[1:] and "run" in cmdline[1:]


def dvc_exp_run_parent() -> tuple[int, float] | None:
    """Pid and start time of the nearest ``dvc exp run`` among this process's ancestors, if any."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().parents():
            with contextlib.suppress(psutil.Error):
                if is_dvc_exp_run(proc.cmdline()):
                    return proc.pid, proc.create_time()
    return None


def hold_workspace(project: Project, exp_name: str) -> Callable[[], None]:
    """Take DVC's experiment rwlock on the workspace for reading; return the call that lets it go.

    Nothing is taken for a ``--temp``/queued run (its workspace is a copy). ``ProjectError``
    when a writer (a ``dvc exp run`` setting up) holds it. Acquire and release are two short
    edits of DVC's lock file, not one long-lived generator: a hold nobody released (training
    that crashed without ``close``) must not run DVC's lock code while Python shuts down, where
    it deadlocks; DVC drops the entry of a dead process itself.
    """
    if project.workspace.resolve() != project.root.resolve():
        return lambda: None
    from dvc.fs import localfs
    from dvc.lock import LockError
    from dvc.rwlock import _acquire_read, _check_blockers, _edit_rwlock  # noqa: PLC2701 - see the module docstring

    tmp_dir = str(project.root / ".dvc" / "tmp" / "exps")  # dvc.repo.experiments.utils.EXEC_TMP_DIR
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    hardlink = _hardlink_lock(project.root)
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    # The entry names this process: when training dies without letting go (SIGKILL), DVC drops
    # the entry of a dead pid itself, at the end of this run and at the next `dvc exp run`.
    pid = os.getpid()
    info = {"pid": pid, "cmd": f"dvc exp run -n {exp_name} (training: {name}, pid {pid})"}
    try:
        with _edit_rwlock(tmp_dir, localfs, hardlink) as lock:
            _check_blockers(tmp_dir, lock, info, mode="write", waiters=[WORKSPACE_LOCK])
            _acquire_read(lock, info, [WORKSPACE_LOCK])
    except LockError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ProjectError(
            f"another experiment holds this workspace ({' '.join(lines[:2])}); wait for it to end"
            " or stop it, then run again",
            path=project.root,
        ) from exc

    def release() -> None:
        with _edit_rwlock(tmp_dir, localfs, hardlink) as lock:
            readers = lock["read"].get(WORKSPACE_LOCK, [])
            if info in readers:
                readers.remove(info)
            if not readers:
                lock["read"].pop(WORKSPACE_LOCK, None)

    return release


def _hardlink_lock(root: Path) -> bool:
    from dvc.config import Config

    try:
        return bool(Config(dvc_dir=str(root / ".dvc")).get("core", {}).get("hardlink_lock", False))
    except Exception:  # noqa: BLE001 - an unreadable config: DVC itself refuses to run then
        return False
