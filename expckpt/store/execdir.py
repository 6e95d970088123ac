"""Keep DVC's ``.git/refs/exps/exec/`` directory alive through Git's housekeeping.

While ``dvc exp run`` trains, DVC's executor refs (``EXEC_BASELINE``, ``EXEC_HEAD``, ...) live
under ``refs/exps/exec/``. ``git pack-refs`` (run by ``git gc``, ``git repack``, ``git
maintenance`` and Git's scheduled maintenance) packs them and removes the then-empty directory.
At the end of the run DVC (``BaseExecutor.commit``) sets the symbolic ref ``EXEC_BRANCH`` through
dulwich's ``DiskRefsContainer.set_symbolic_ref``, which, unlike ``set_if_equals``, does not
create the ref's directory: the run fails with ``No such file or directory:
.git/refs/exps/exec/EXEC_BRANCH.lock`` (rc 255) after every checkpoint was published. That is a
dulwich/DVC bug; expckpt cannot patch it, so it keeps the directory non-empty instead.

The file it keeps there starts with a dot: Git skips such names in loose ref directories and
dulwich's ref listing skips names that are not valid refs, so no Git or DVC command sees it as
a ref, while ``pack-refs`` cannot remove a directory that holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["KEEP_FILE", "keep_exec_dir"]

KEEP_FILE = ".expckpt-keep"
"""The placeholder in ``refs/exps/exec/`` (not a valid ref name, so never read as one)."""


def _common_dir(git_dir: Path) -> Path:
    """Where refs live: the main ``.git`` also for a linked worktree's git dir."""
    try:
        pointer = (git_dir / "commondir").read_text().strip()
    except OSError:
        return git_dir
    return (git_dir / pointer).resolve()


def keep_exec_dir(git_dir: Path) -> None:
    """Make sure ``refs/exps/exec/`` exists and holds the placeholder (cheap: one stat when it does).

    Call it before training and after each publish; it never fails training.
    """
    keep = _common_dir(Path(git_dir)) / "refs" / "exps" / "exec" / KEEP_FILE
    if keep.exists():
        return
    try:
        keep.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(keep, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    except OSError:  # a read-only repository: DVC would fail there anyway
        pass
