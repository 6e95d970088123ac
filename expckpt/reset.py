"""``expckpt reset``: make the next ``dvc exp run`` start from scratch (DVC 2's ``--reset``).

Removes the workspace's checkpoint files, dvclive's history and expckpt's note of the last
checkpoint. Committed checkpoints (refs and cache) are not touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from expckpt.project import Project
from expckpt.session import SessionNote

__all__ = ["reset_workspace"]


def reset_workspace(project: Project, *, live_dir: str = "dvclive") -> list[Path]:
    """Delete what resuming would read; return what was removed."""
    removed: list[Path] = []
    for out in project.outputs():
        if not out.checkpoint:
            continue
        path = project.workspace / out.path
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
        elif path.exists():
            path.unlink()
            removed.append(path)
        SessionNote.clear(project.workspace, Path(out.path).as_posix())  # `ckpt/`: noted as `ckpt`
    live = project.workspace / live_dir
    if live.is_dir():
        shutil.rmtree(live)
        removed.append(live)
    return removed
