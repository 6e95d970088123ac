"""A training framework's own checkpoint folders in the workspace, so ``expckpt reset`` can clean them.

The Hugging Face Trainer writes ``<output_dir>/checkpoint-<step>/`` folders beside expckpt's
checkpoint file; ``trainer.train(resume_from_checkpoint=True)`` resumes from the newest one it
finds there. Inside ``dvc exp run`` the callback (``expckpt.integrations.hf``) records its
``output_dir`` here (``.dvc/tmp/expckpt/trainer-dirs.json``: paths relative to the workspace),
and ``expckpt reset`` removes the ``checkpoint-<digits>`` folders below each recorded path, so
nothing stale is left for a later run to resume from. Other files in ``output_dir`` stay.

Only folders inside the workspace are recorded, and only those are cleaned: the file is read
back as untrusted input (a path leaving the workspace, or through a symbolic link, is skipped).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

from expckpt.serialize.atomic import atomic_write_bytes

__all__ = ["FOLDER", "clean_trainer_dirs", "record_trainer_dir", "recorded_trainer_dirs"]

FOLDER = re.compile(r"checkpoint-[0-9]+")
"""The Trainer's checkpoint folder names (transformers' ``PREFIX_CHECKPOINT_DIR`` + global step)."""


def _record_path(workspace: Path) -> Path:
    return workspace / ".dvc" / "tmp" / "expckpt" / "trainer-dirs.json"


def recorded_trainer_dirs(workspace: Path) -> list[str]:
    """The recorded folders, relative to ``workspace`` ([] when none or unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(_record_path(workspace).read_text())
        if isinstance(data, list):
            return [d for d in data if isinstance(d, str)]
    return []


def record_trainer_dir(workspace: Path, output_dir: Path) -> bool:
    """Remember ``output_dir`` (absolute, or relative to the current directory) for ``expckpt
    reset``; False, recording nothing, when it is not inside ``workspace``."""
    root = workspace.resolve()
    try:
        rel = output_dir.resolve().relative_to(root).as_posix()
    except ValueError:
        return False
    if rel == ".":
        return False
    known = recorded_trainer_dirs(workspace)
    if rel not in known:
        path = _record_path(workspace)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(sorted([*known, rel])).encode(), durable=False)
    return True


def _inside(workspace: Path, rel: str) -> Path | None:
    """``workspace/rel`` if it is a real folder inside the workspace (no link on the way)."""
    root = workspace.resolve()
    candidate = root / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts or not candidate.is_dir():
        return None
    for part in (candidate, *candidate.parents):
        if part == root:
            return candidate
        if part.is_symlink():
            return None
    return None


def clean_trainer_dirs(workspace: Path) -> list[Path]:
    """Remove the ``checkpoint-<step>`` folders below every recorded folder; return them."""
    removed: list[Path] = []
    for rel in recorded_trainer_dirs(workspace):
        folder = _inside(workspace, rel)
        if folder is None:
            continue
        for child in sorted(folder.iterdir()):
            if FOLDER.fullmatch(child.name) and child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
                removed.append(child)
    return removed
