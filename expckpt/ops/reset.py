"""``expckpt reset``: make the next ``dvc exp run`` start from scratch (DVC 2's ``--reset``).

Removes the workspace's checkpoint files, dvclive's history, expckpt's note of the last
checkpoint and the ``checkpoint-<step>`` folders a framework left where the run recorded them
(the HF Trainer's ``output_dir``: ``expckpt.store.trainerdirs``). Committed checkpoints (refs and
cache) are not touched.

The reset mark records what the workspace held then: DVC's ``EXEC_APPLY`` (the last
``dvc exp apply``) and the checkpoint output's MD5 in the workspace dvc.lock. A ``dvc exp apply``
after the reset wins over it (``applied_since_reset``): when ``EXEC_APPLY`` was set again since,
or dvc.lock names another checkpoint, and the checkpoint file is exactly that verified checkpoint
(its MD5 is the one the checkpoint's commit records), the run resumes from it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from expckpt.errors import ExpCkptError
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project
from expckpt.store.records import CheckpointRecord, load_records
from expckpt.store.refs import EXEC_APPLY
from expckpt.store.session import SessionNote, hash_with_note
from expckpt.store.trainerdirs import clean_trainer_dirs
from expckpt.ops.verify import locked_outputs

__all__ = ["applied_over_reset", "applied_since_reset", "reset_stands", "reset_workspace"]


def _held(workspace: Path, store: GitStore | None) -> dict[str, Any]:
    """``EXEC_APPLY`` and dvc.lock's output hashes now (what a later apply would change)."""
    applied = store.get_ref(EXEC_APPLY) if store is not None else None
    with contextlib.suppress(OSError):
        return {
            "applied": applied,
            "locked": locked_outputs((workspace / "dvc.lock").read_bytes()),
            "time": time.time(),
        }
    return {"applied": applied, "locked": {}, "time": time.time()}


def _open_store(root: Path) -> GitStore | None:
    try:
        return GitStore.open(root)
    except (ExpCkptError, OSError):
        return None


def reset_workspace(project: Project, *, live_dir: str = "dvclive") -> list[Path]:
    """Delete what resuming would read (and unstage it); return what was removed."""
    store = _open_store(project.root)
    try:
        removed = _remove(project, live_dir, _held(project.workspace, store))
        if store is not None:
            _unstage(store, project.workspace, removed)
    finally:
        if store is not None:
            store.close()
    return removed


def _remove(project: Project, live_dir: str, held: dict[str, Any]) -> list[Path]:
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
        SessionNote.clear(project.workspace, Path(out.path).as_posix(), held)  # `ckpt/`: noted as `ckpt`
    live = project.workspace / live_dir
    if live.is_dir():
        shutil.rmtree(live)
        removed.append(live)
    removed.extend(clean_trainer_dirs(project.workspace))  # else `resume_from_checkpoint=True` finds them
    return removed


def _unstage(store: GitStore, workspace: Path, removed: list[Path]) -> None:
    """Unstage what was just removed. dvclive stages its files (``git add``) when training ends
    inside ``dvc exp run``; DVC resets the index when the run ends, but not when it ended first
    (the job's shell died of the SIGTERM that paused training). Files staged but deleted make
    DVC's next run fail ("Stash apply resulted in merge conflicts")."""
    inside = [path for path in removed if path.is_relative_to(workspace) and path != workspace]
    store.unstage(workspace, [path.relative_to(workspace).as_posix() for path in inside])


def _apply_time(store: GitStore) -> float:
    """When ``dvc exp apply`` last wrote ``EXEC_APPLY`` (0 when it is packed or absent)."""
    with contextlib.suppress(OSError):
        return (store.git_dir / EXEC_APPLY).stat().st_mtime
    return 0.0


def _changed_since_reset(workspace: Path, rel_paths: Sequence[str], store: GitStore) -> bool:
    """Whether a ``dvc exp apply`` (a new ``EXEC_APPLY``, or dvc.lock naming other outputs) came
    after the reset marked for ``rel_paths[0]``; False without a mark that recorded them."""
    mark = SessionNote.reset_mark(workspace, rel_paths[0])
    if mark is None or "applied" not in mark:
        return False  # not reset, or reset by an expckpt that recorded nothing: the reset stands
    applied = store.get_ref(EXEC_APPLY)
    now = _held(workspace, None)["locked"]
    reset_at = mark.get("time")
    newer = isinstance(reset_at, (int, float)) and applied is not None and _apply_time(store) > reset_at
    locked_mark = mark.get("locked")
    locked: dict[str, Any] = locked_mark if isinstance(locked_mark, dict) else {}
    relocked = any(now.get(rel) != locked.get(rel) for rel in rel_paths)
    return applied != mark.get("applied") or relocked or newer


def reset_stands(workspace: Path, rel_path: str, store: GitStore | None) -> bool:
    """``expckpt reset`` marked ``rel_path`` and no ``dvc exp apply`` came after it."""
    if not SessionNote.was_reset(workspace, rel_path):
        return False
    return store is None or not _changed_since_reset(workspace, [rel_path], store)


def applied_since_reset(workspace: Path, current: Mapping[str, str | None], store: GitStore) -> CheckpointRecord | None:
    """The checkpoint a ``dvc exp apply`` after ``expckpt reset`` put in the workspace, or None.

    ``current`` is each checkpoint output's MD5 now (``rel_path -> md5``, the first one the reset
    mark's). None (the reset stands) unless the workspace changed since the reset
    (``_changed_since_reset``) and every output is exactly one checkpoint.
    """
    if not _changed_since_reset(workspace, list(current), store):
        return None
    applied = store.get_ref(EXEC_APPLY)
    matching = [
        r for r in load_records(store) if all(rel in r.outs and r.outs[rel].md5 == md5 for rel, md5 in current.items())
    ]
    matching.sort(key=lambda r: (r.commit == applied, r.time))
    return matching[-1] if matching and all(current.values()) else None


def applied_over_reset(workspace: Path, paths: Mapping[str, Path], store: GitStore) -> str | None:
    """Inside ``dvc exp run``: when a ``dvc exp apply`` after the reset wins (``applied_since_reset``),
    drop the reset marks and return the line saying so; None when the reset stands."""
    if not all(p.exists() for p in paths.values()):
        return None
    current = {rel: hash_with_note(p, SessionNote.read(workspace, rel))[0] for rel, p in paths.items()}
    record = applied_since_reset(workspace, current, store)
    if record is None:
        return None
    for rel in paths:
        SessionNote.forget_reset(workspace, rel)
    return (
        f"expckpt: {next(iter(paths))} is {record.name} ({record.commit[:7]}), applied after `expckpt reset`;"
        " the apply wins: resuming from it (`expckpt reset` again to start from scratch)"
    )
