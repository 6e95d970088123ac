"""Finding where a run resumes: which checkpoint the workspace file is, or the last complete one.

The rules, in order:

1. The file matches a checkpoint expckpt published (by MD5): resume from that checkpoint and
   record it as the new chain's parent. Among byte-identical checkpoints the workspace's own
   last one wins while the file is untouched, then ``dvc exp apply``'s, then the newest.
2. The file is not one expckpt ever wrote: use it as it is (a user's own file; a corrupt one
   fails loading with a clear error).
3. The file was written by a checkpoint that never got its ref (a crash in between): roll back
   to the workspace's last complete checkpoint from the cache, or, if none finished before it,
   start from scratch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from expckpt.atomic import TEMP_MARK
from expckpt.cache import DvcCache
from expckpt.dirout import hash_dir, output_stat
from expckpt.gitstore import GitStore
from expckpt.records import CheckpointRecord, load_records
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
    without this, every crash would leak one. Files of live processes are left alone. For a
    directory output, its files' temps inside it too.
    """
    places = [(path.parent, f"{TEMP_MARK}{path.name}.")]
    if path.is_dir():
        places += [(Path(root), TEMP_MARK) for root, _, _ in os.walk(path)]
    for directory, prefix in places:
        with contextlib.suppress(OSError):
            for tmp in directory.iterdir():
                if not tmp.name.startswith(prefix):
                    continue
                rest = tmp.name[len(prefix) :] if prefix != TEMP_MARK else tmp.name.rsplit(".", 2)[-2] + "."
                pid = rest.split(".", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        tmp.unlink()


def _stat_key(path: Path, note: SessionNote | None) -> bool:
    """Whether ``path`` is exactly as the note left it (untouched since that checkpoint)."""
    return note is not None and output_stat(path) == note.stat_key()


def _ours(path: Path, note: SessionNote | None, md5: str | None, written: Mapping[str, int]) -> bool:
    """Whether expckpt wrote this output: its object, or for a directory every file in it (a
    checkpoint cut short while renaming its files leaves a mix no manifest describes)."""
    if md5 is None:
        return False
    if md5 in written or not path.is_dir():
        return md5 in written
    known = {k: tuple(v) for k, v in (note.files or {}).items()} if note else None
    stats = hash_dir(path, known)[3]  # type: ignore[arg-type]
    return bool(stats) and all(s[0] in written for s in stats.values())


def find_resume_point(
    path: Path | Mapping[str, Path],
    rel_path: str,
    workspace: Path,
    store: GitStore,
    cache: DvcCache,
    echo: Callable[[str], None],
) -> ResumePoint:
    """Apply the module's rules to the existing checkpoint output ``path`` (or to several:
    ``rel_path -> path``, the first being ``rel_path``; a checkpoint matches when all do)."""
    paths = dict(path) if isinstance(path, Mapping) else {rel_path: path}
    notes = {rel: SessionNote.read(workspace, rel) for rel in paths}
    note = notes[rel_path]
    current = {rel: hash_with_note(p, notes[rel])[0] if p.exists() else None for rel, p in paths.items()}
    records = [r for r in load_records(store) if all(rel in r.outs for rel in paths)]
    matching = [r for r in records if all(r.outs[rel].md5 == current[rel] for rel in paths)]
    if matching:
        # Byte-identical checkpoints are common (same seed, same steps). DVC keeps EXEC_APPLY
        # until HEAD moves, so it may name an apply that came before this workspace's last run.
        applied = store.get_ref("refs/exps/exec/EXEC_APPLY")
        noted = note.commit if note else None
        untouched = _stat_key(paths[rel_path], note)
        matching.sort(key=lambda r: (untouched and r.commit == noted, r.commit == applied, r.commit == noted, r.time))
        return ResumePoint(matching[-1], rolled_back=False)
    written = cache.written_objects()
    if not any(_ours(p, notes[rel], current[rel], written) for rel, p in paths.items()):
        return ResumePoint(None, rolled_back=False)
    if note is not None:
        last = next((r for r in records if r.commit == note.commit), None)
        if last is not None and all(cache.has(last.outs[rel].md5) for rel in paths):
            for rel, p in paths.items():
                if current[rel] != last.outs[rel].md5:
                    cache.checkout(last.outs[rel].md5, p)
            names = ", ".join(paths)
            echo(
                f"expckpt: {names} was written by a checkpoint that did not finish;"
                f" resuming from the last complete one, {last.name}"
            )
            return ResumePoint(last, rolled_back=True)
    if note is None and all(cache.has(md5) or p.is_dir() for (rel, md5), p in zip(current.items(), paths.values()) if md5):
        # The first checkpoint in this workspace was cut short after its file was published (no
        # ref, no note): nothing complete to go back to. Its bytes stay in the cache.
        for p in paths.values():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        echo(
            f"expckpt: {', '.join(paths)} was written by a checkpoint that did not finish, and"
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
