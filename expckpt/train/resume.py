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
4. The file is missing although the workspace's dvc.lock or note names a checkpoint, and that
   checkpoint's cache object is gone too: stop (``refuse_lost_checkpoint``), never start over.

Restoring the dvclive history reads a checkpoint commit's tree, which is untrusted: see
``expckpt.store.livefiles``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from expckpt.serialize.atomic import TEMP_MARK
from expckpt.store.cache import DvcCache
from expckpt.serialize.dirout import hash_dir, output_stat
from expckpt.errors import MissingCheckpointError
from expckpt.store.gclock import pid_alive
from expckpt.store.gitstore import GitStore
from expckpt.store.records import CheckpointRecord, load_records
from expckpt.store.refs import EXEC_APPLY, CheckpointRef
from expckpt.store.session import SessionNote, hash_with_note
from expckpt.text import terminal_safe
from expckpt.ops.reset import reset_stands
from expckpt.ops.verify import locked_outputs

__all__ = [
    "ResumePoint",
    "Resumed",
    "find_resume_point",
    "refuse_lost_checkpoint",
    "remove_stale_temps",
]

_MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")  # a directory output is named by its manifest


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
                if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        tmp.unlink()


def _stat_key(path: Path, note: SessionNote | None) -> bool:
    """Whether ``path`` is exactly as the note left it (untouched since that checkpoint)."""
    if note is None:
        return False
    return output_stat(path) == note.stat_key()


def _ours(path: Path, note: SessionNote | None, md5: str | None, written: Mapping[str, int]) -> bool:
    """Whether expckpt wrote this output: its object, or for a directory every file in it (a
    checkpoint cut short while renaming its files leaves a mix no manifest describes)."""
    if md5 is None:
        return False
    if md5 in written or not path.is_dir():
        return md5 in written
    known = {k: tuple(v) for k, v in (note.files or {}).items()} if note else None
    stats = hash_dir(path, known)[3]
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
    md5 = current[rel_path]
    records = [r for r in load_records(store) if all(rel in r.outs for rel in paths)]
    matching = [r for r in records if all(r.outs[rel].md5 == current[rel] for rel in paths)]
    pending = SessionNote.pending(workspace, rel_path)
    if pending is not None and pending[1] != md5:  # killed before its file was replaced
        SessionNote.clear_pending(workspace, rel_path)
    elif pending is not None:
        finished = [r for r in matching if r.ref.ref == pending[0]]
        point = (
            ResumePoint(finished[-1], rolled_back=False)
            if finished
            else _roll_back(paths, rel_path, current, note, records, cache, echo)
        )
        SessionNote.clear_pending(workspace, rel_path)  # decided: a later `dvc exp apply` is a choice
        return point
    if matching:
        # Byte-identical checkpoints are common (same seed, same steps). DVC keeps EXEC_APPLY
        # until HEAD moves, so it may name an apply that came before this workspace's last run.
        applied = store.get_ref(EXEC_APPLY)
        noted = note.commit if note else None
        if note is not None and applied == note.applied and md5 == note.md5:
            applied = None  # seen before the last checkpoint, whose bytes the file holds: no new choice
        untouched = _stat_key(paths[rel_path], note)
        matching.sort(key=lambda r: (untouched and r.commit == noted, r.commit == applied, r.commit == noted, r.time))
        return ResumePoint(matching[-1], rolled_back=False)
    written = cache.written_objects()
    if not any(_ours(p, notes[rel], current[rel], written) for rel, p in paths.items()):
        return ResumePoint(None, rolled_back=False)
    return _roll_back(paths, rel_path, current, note, records, cache, echo)


def _roll_back(
    paths: Mapping[str, Path],
    rel_path: str,
    current: Mapping[str, str | None],
    note: SessionNote | None,
    records: list[CheckpointRecord],
    cache: DvcCache,
    echo: Callable[[str], None],
) -> ResumePoint:
    """Rule 3: the outputs are an unfinished checkpoint's; go back to the last complete one."""
    names = ", ".join(paths)
    if note is not None:
        last = next((r for r in records if r.commit == note.commit), None)
        if last is not None and all(cache.has(last.outs[rel].md5) for rel in paths):
            for rel, p in paths.items():
                if current[rel] != last.outs[rel].md5:
                    cache.checkout(last.outs[rel].md5, p)
            echo(
                f"expckpt: {names} was written by a checkpoint that did not finish;"
                f" resuming from the last complete one, {last.name}"
            )
            return ResumePoint(last, rolled_back=True)
    if note is None and all(cache.has(m) or paths[rel].is_dir() for rel, m in current.items() if m):
        # The first checkpoint in this workspace was cut short after its file was published (no
        # ref, no note): nothing complete to go back to. Its bytes stay in the cache.
        for p in paths.values():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        echo(
            f"expckpt: {names} was written by a checkpoint that did not finish, and"
            " none finished before it; starting from scratch"
        )
        return ResumePoint(None, rolled_back=True)
    return ResumePoint(None, rolled_back=False)


def _lost_checkpoint(
    md5: str, rel_path: str, records: list[CheckpointRecord], note: SessionNote | None
) -> tuple[str, str] | None:
    """Name and commit of the checkpoint whose ``rel_path`` had hash ``md5`` (the workspace's
    own last one preferred)."""
    holders = [r for r in records if rel_path in r.outs and r.outs[rel_path].md5 == md5]
    holders.sort(key=lambda r: (note is not None and r.commit == note.commit, r.time))
    if holders:
        return holders[-1].name, holders[-1].commit
    if note is not None and note.md5 == md5:
        ref = CheckpointRef.parse(note.ref)
        return (ref.name if ref else note.ref), note.commit
    return None


def refuse_lost_checkpoint(path: Path, rel_path: str, workspace: Path, store: GitStore, cache: DvcCache) -> None:
    """Raise ``MissingCheckpointError`` when ``path`` is gone but should hold a checkpoint.

    The workspace's dvc.lock (what ``dvc exp run`` and ``dvc exp apply`` check out) and its note
    of the last complete checkpoint say which checkpoint the file should be. When that file and
    its cache object are both gone (``dvc gc -w`` without ``--all-experiments``, then a failed
    ``dvc exp apply``), starting from step 0 would quietly throw the run's progress away.
    After ``expckpt reset`` a missing file is the fresh start the user asked for, unless a
    ``dvc exp apply`` came after the reset: the applied checkpoint is then what is missing.
    """
    if path.exists() or reset_stands(workspace, rel_path, store):
        return
    note = SessionNote.read(workspace, rel_path)
    try:
        lock: bytes | None = (workspace / "dvc.lock").read_bytes()
    except OSError:
        lock = None
    named = [
        (locked_outputs(lock).get(rel_path), "named by the workspace's dvc.lock"),
        (note.md5 if note else None, "the workspace's last checkpoint"),
    ]
    records: list[CheckpointRecord] | None = None
    for md5, source in named:  # dvc.lock first: it is what DVC checks out
        if not isinstance(md5, str) or not _MD5.fullmatch(md5):
            continue
        if cache.has(md5):
            return  # DVC can check the file out again: nothing is lost
        if records is None:
            records = load_records(store)
        found = _lost_checkpoint(md5, rel_path, records, note)
        if found is None and md5 not in cache.written_objects():
            continue  # not a file expckpt wrote: a fresh start loses no checkpoint
        name = terminal_safe(found[0]) if found else None
        what = f"checkpoint {name} ({found[1][:7]})" if found else "a checkpoint expckpt wrote"
        pull = name or "<exp>@<step>"
        raise MissingCheckpointError(
            f"{rel_path} should be {what} ({source}), but neither {rel_path} nor its cache object"
            f" (md5 {md5}) exists, so training would start over from step 0; get it back with"
            f" `dvc exp pull <remote> {pull}` then `dvc exp apply {pull}`, resume from another"
            " checkpoint with `dvc exp apply <exp>@<step>`, or start from scratch with"
            " `expckpt reset`",
            path=path,
            checkpoint=found[0] if found else None,
        )
