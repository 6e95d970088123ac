"""Finding where a run resumes: which checkpoint the workspace file is, or the last complete one.

The rules, in order:

0. The file is the one the workspace's pending mark names (a run was killed while publishing
   it): if that checkpoint's ref exists, resume from it (killed between its ref and its note);
   if not, it never finished: rule 3, even when another checkpoint holds the same bytes.
1. The file matches a checkpoint expckpt published (by MD5): resume from that checkpoint and
   record it as the new chain's parent. Among byte-identical checkpoints the workspace's own
   last one wins while the file is untouched, then ``dvc exp apply``'s (unless the note had
   already seen that apply and the file still holds the noted checkpoint's bytes: DVC keeps
   EXEC_APPLY until HEAD moves, and ``dvc exp run`` checks the file out again from dvc.lock),
   then the workspace's own last one, then the newest.
2. The file is not one expckpt ever wrote: use it as it is (a user's own file; a corrupt one
   fails loading with a clear error).
3. The file was written by a checkpoint that never got its ref (a crash in between): roll back
   to the workspace's last complete checkpoint from the cache, or, if none finished before it,
   start from scratch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from expckpt.atomic import TEMP_MARK
from expckpt.cache import DvcCache
from expckpt.gitstore import GitStore
from expckpt.records import CheckpointRecord, load_records
from expckpt.refs import EXEC_APPLY
from expckpt.session import SessionNote, hash_with_note

__all__ = ["ResumePoint", "Resumed", "find_resume_point", "remove_stale_temps", "restore_live_files"]


@dataclass(frozen=True)
class Resumed:
    """Where a run resumed from."""

    step: int
    """The last completed step in the checkpoint (training goes on at ``step + 1``)."""
    record: CheckpointRecord | None
    """The checkpoint experiment it matches, if any."""
    rolled_back: bool = False
    """True when an unfinished checkpoint was discarded for the last complete one."""


@dataclass(frozen=True)
class ResumePoint:
    record: CheckpointRecord | None
    rolled_back: bool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete ``<TEMP_MARK><name>.<pid>.<thread>`` files of processes that no longer exist.

    A checkpoint killed before its rename leaves a complete temp file as big as the state;
    without this, every crash would leak one. Files of live processes are left alone.
    """
    prefix = f"{TEMP_MARK}{path.name}."
    with contextlib.suppress(OSError):
        for tmp in path.parent.iterdir():
            pid = tmp.name[len(prefix) :].split(".", 1)[0] if tmp.name.startswith(prefix) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def find_resume_point(
    path: Path,
    rel_path: str,
    workspace: Path,
    store: GitStore,
    cache: DvcCache,
    echo: Callable[[str], None],
) -> ResumePoint:
    """Apply the module's rules to the existing checkpoint file ``path``."""
    note = SessionNote.read(workspace, rel_path)
    md5, _ = hash_with_note(path, note)
    records = [r for r in load_records(store) if rel_path in r.outs]
    matching = [r for r in records if r.outs[rel_path].md5 == md5]
    pending = SessionNote.pending(workspace, rel_path)
    if pending is not None and pending[1] != md5:  # killed before its file was replaced
        SessionNote.clear_pending(workspace, rel_path)
    elif pending is not None:
        finished = [r for r in matching if r.ref.ref == pending[0]]
        point = ResumePoint(finished[-1], rolled_back=False) if finished else _roll_back(
            path, rel_path, md5, note, records, cache, echo)
        SessionNote.clear_pending(workspace, rel_path)  # decided: a later `dvc exp apply` is a choice
        return point
    if matching:
        # Byte-identical checkpoints are common (same seed, same steps). DVC keeps EXEC_APPLY
        # until HEAD moves, so it may name an apply that came before this workspace's last run.
        applied = store.get_ref(EXEC_APPLY)
        noted = note.commit if note else None
        if note is not None and applied == note.applied and md5 == note.md5:
            applied = None  # seen before the last checkpoint, whose bytes the file holds: no new choice
        st = os.stat(path)
        untouched = note is not None and (note.size, note.mtime_ns, note.inode) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
        )
        matching.sort(key=lambda r: (untouched and r.commit == noted, r.commit == applied, r.commit == noted, r.time))
        return ResumePoint(matching[-1], rolled_back=False)
    if md5 not in cache.written_objects():
        return ResumePoint(None, rolled_back=False)
    return _roll_back(path, rel_path, md5, note, records, cache, echo)


def _roll_back(
    path: Path,
    rel_path: str,
    md5: str,
    note: SessionNote | None,
    records: list[CheckpointRecord],
    cache: DvcCache,
    echo: Callable[[str], None],
) -> ResumePoint:
    """Rule 3: the file is an unfinished checkpoint's; go back to the last complete one."""
    if note is not None:
        last = next((r for r in records if r.commit == note.commit), None)
        if last is not None and cache.has(note.md5):
            cache.checkout(note.md5, path)
            echo(
                f"expckpt: {rel_path} was written by a checkpoint that did not finish;"
                f" resuming from the last complete one, {last.name}"
            )
            return ResumePoint(last, rolled_back=True)
    if note is None and cache.has(md5):
        # The first checkpoint in this workspace was cut short after its file was published (no
        # ref, no note): nothing complete to go back to. Its bytes stay in the cache.
        path.unlink()
        echo(
            f"expckpt: {rel_path} was written by a checkpoint that did not finish, and"
            " none finished before it; starting from scratch"
        )
        return ResumePoint(None, rolled_back=True)
    return ResumePoint(None, rolled_back=False)


def restore_live_files(store: GitStore, commit: str, workspace: Path, live_dir: str) -> None:
    """Make the dvclive directory exactly what ``commit`` holds (history up to its step)."""
    wanted = store.list_dir(commit, live_dir)
    if not wanted:
        return
    for root, _, names in os.walk(workspace / live_dir):
        for name in names:
            full = Path(root, name)
            if full.relative_to(workspace).as_posix() not in wanted:
                full.unlink()
    for rel, data in wanted.items():
        target = workspace / rel
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
