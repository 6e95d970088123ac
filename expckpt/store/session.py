"""The workspace's note of its last complete checkpoint, and the mark of the one in progress.

The note is written (atomically) only after a checkpoint's ref exists, so after a crash in the
middle of a checkpoint it still names the last complete one, and resuming can roll back to it.
It also remembers the checkpoint file's stat, so an unchanged file is not rehashed on resume,
and the ``dvc exp apply`` target (``EXEC_APPLY``) it had already seen: DVC keeps that ref until
HEAD moves, so an apply that came before this workspace's last checkpoint is not a new choice.

The pending mark (``<file>.pending.json``: ref and MD5) is written before the checkpoint file is
replaced and removed once the note names it. While it is there, a file with its MD5 is that
checkpoint's, even when another checkpoint holds the same bytes (same seed, same steps): a run
killed before its ref is rolled back, one killed between its ref and its note goes on from it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from expckpt.serialize.atomic import atomic_write_bytes, md5_file
from expckpt.serialize.dirout import hash_dir

__all__ = ["SessionNote", "hash_with_note"]

_RESET_MARK = {"reset": True}


@dataclass(frozen=True)
class SessionNote:
    """The last complete checkpoint of one checkpoint file in one workspace."""

    ref: str
    commit: str
    md5: str
    size: int
    step: int
    mtime_ns: int
    inode: int
    applied: str | None = None
    """``refs/exps/exec/EXEC_APPLY`` when the note was written (a later, different one is new)."""
    files: dict[str, list[Any]] | None = None
    """For a directory output: ``relpath -> [md5, size, mtime_ns, inode]`` of each file, so an
    unchanged directory is not rehashed (its own stat says nothing about its files)."""

    def stat_key(self) -> tuple[Any, ...]:
        """The noted stat in ``expckpt.serialize.dirout.output_stat``'s form."""
        if self.files is None:
            return self.size, self.mtime_ns, self.inode
        return tuple(sorted((rel, s[1], s[2], s[3]) for rel, s in self.files.items()))

    @staticmethod
    def path_for(workspace: Path, checkpoint: str) -> Path:
        safe = checkpoint.replace("/", "__")
        return workspace / ".dvc" / "tmp" / "expckpt" / f"{safe}.json"

    @classmethod
    def read(cls, workspace: Path, checkpoint: str) -> SessionNote | None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return cls(**json.loads(cls.path_for(workspace, checkpoint).read_text()))
        return None

    def write(self, workspace: Path, checkpoint: str) -> None:
        path = self.path_for(workspace, checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(asdict(self)).encode(), durable=False)

    @staticmethod
    def mark_pending(workspace: Path, checkpoint: str, ref: str, md5: str) -> None:
        """The checkpoint ``ref`` is about to replace the file with bytes of ``md5``."""
        path = SessionNote.path_for(workspace, checkpoint).with_suffix(".pending.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({"ref": ref, "md5": md5}).encode(), durable=False)

    @staticmethod
    def pending(workspace: Path, checkpoint: str) -> tuple[str, str] | None:
        """``(ref, md5)`` of a checkpoint that replaced the file and was never noted, if any."""
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(SessionNote.path_for(workspace, checkpoint).with_suffix(".pending.json").read_text())
            return str(data["ref"]), str(data["md5"])
        return None

    @staticmethod
    def clear_pending(workspace: Path, checkpoint: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            SessionNote.path_for(workspace, checkpoint).with_suffix(".pending.json").unlink()

    @staticmethod
    def clear(workspace: Path, checkpoint: str, held: dict[str, Any] | None = None) -> None:
        """Forget the last checkpoint: the next run in this workspace starts from scratch.

        Leaves a reset mark where the note was, because ``dvc exp run`` checks the checkpoint
        file out of dvc.lock again (forced) before training starts; the next run ignores that
        file, and its first checkpoint's note replaces the mark. ``held`` records what the
        workspace held at the reset (``expckpt.ops.reset``: a later ``dvc exp apply`` wins over it).
        """
        path = SessionNote.path_for(workspace, checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({**(held or {}), **_RESET_MARK}).encode(), durable=False)

    @staticmethod
    def reset_mark(workspace: Path, checkpoint: str) -> dict[str, Any] | None:
        """The reset mark ``clear`` left (with what it recorded), if it is the last thing here."""
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(SessionNote.path_for(workspace, checkpoint).read_text())
            if isinstance(data, dict) and data.get("reset") is True:
                return data
        return None

    @staticmethod
    def was_reset(workspace: Path, checkpoint: str) -> bool:
        """Whether ``clear`` was the last thing to happen to this workspace's note."""
        return SessionNote.reset_mark(workspace, checkpoint) is not None

    @staticmethod
    def forget_reset(workspace: Path, checkpoint: str) -> None:
        """Drop the reset mark (a checkpoint was saved since), leaving a real note alone."""
        if SessionNote.was_reset(workspace, checkpoint):
            with contextlib.suppress(FileNotFoundError):
                SessionNote.path_for(workspace, checkpoint).unlink()


def hash_with_note(path: Path, note: SessionNote | None) -> tuple[str, int]:
    """MD5 and size of ``path``, trusting ``note`` when the file's stat still matches it (for
    a directory: its ``.dir`` hash, trusting the note's stat of each file)."""
    if path.is_dir():
        md5, size, _, _ = hash_dir(path, {k: tuple(v) for k, v in (note.files or {}).items()} if note else None)
        return md5, size
    st = os.stat(path)
    if note and (note.size, note.mtime_ns, note.inode) == (st.st_size, st.st_mtime_ns, st.st_ino):
        return note.md5, note.size
    return md5_file(path)
