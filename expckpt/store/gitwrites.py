"""Git writes that live beside git's own: compare-and-swap refs, waits for foreign locks.

Git runs ``git pack-refs`` and ``git gc --auto`` on its own, and users run ``git`` and ``dvc``
commands while training goes on. So a write here:

* takes ``<ref>.lock`` exactly as git does, and only then compares the ref with the value the
  caller expects (``RefConflictError`` with ``expected``/``actual`` when it differs);
* waits, with backoff and a bound (``LOCK_WAIT_S``), for a ``.lock`` someone else holds, and
  removes one only when ``gitlocks`` proves a dead expckpt writer left it;
* deletes in git's own order (dulwich's ``remove_if_equals`` drops the loose file before it
  locks packed-refs, so a concurrent ``git pack-refs`` could pack the old value back): hold
  ``<ref>.lock`` and ``packed-refs.lock``, compare, rename a packed-refs without the ref into
  place, remove the loose file, and only then release ``packed-refs.lock``;
* cleans up after itself when the disk is full: no ``.lock`` left, no ``Exception ignored``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dulwich.file import FileLocked, GitFile, ensure_dir_exists
from dulwich.objects import ShaFile
from dulwich.refs import DiskRefsContainer

from expckpt.errors import GitLockedError, RefConflictError
from expckpt.store.gitlocks import WriterSlot, writer_slot

__all__ = ["LOCK_WAIT_S", "RecordingStore", "delete_ref", "swap_ref", "write_waiting_for_locks"]

LOCK_WAIT_S = 10.0
"""How long a write waits for a ``.lock`` another process holds before it fails."""

_T = TypeVar("_T")


def write_waiting_for_locks(git_dir: Path, what: str, write: Callable[[WriterSlot], _T], *, lock_wait: float) -> _T:
    """Run ``write`` in the writers' slot; on a ``.lock`` in the way, recover or wait.

    A lock that ``gitlocks`` proves a dead expckpt writer left is removed and the write goes on
    at once. Any other (``git pack-refs``, ``git gc``, a ``git update-ref`` transaction, a git
    killed mid-update) is waited for with backoff up to ``lock_wait`` seconds; then the write
    fails with one line naming the file.
    """
    deadline = time.monotonic() + lock_wait
    delay = 0.005
    lock: Path | None = None
    while True:
        with writer_slot(git_dir) as slot:
            try:
                return write(slot)
            except FileLocked as exc:
                lock = Path(os.fsdecode(exc.lockfilename))
                if slot.remove_if_owned(lock):
                    continue
            finally:
                slot.clear()
        if time.monotonic() >= deadline:
            raise GitLockedError(
                f"could not write {what}: {lock} is held by another process (a git command?)"
                f" for over {lock_wait:g} s; wait for it to finish and run again, or remove"
                " that file if no git command is running",
                ref=str(lock),
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def swap_ref(slot: WriterSlot, refs: DiskRefsContainer, ref: str, new: str, old: str | None) -> None:
    """Point ``ref`` at ``new`` while holding ``<ref>.lock``, if it holds ``old`` (None: absent)."""
    name = ref.encode()
    path = Path(os.fsdecode(refs.refpath(name)))
    file = _lock_ref(path)
    try:
        slot.hold_ref_lock(path.with_name(path.name + ".lock"))
        current = refs.read_loose_ref(name) or refs.get_packed_refs().get(name)
        actual = current.decode() if current else None
        if actual != old:
            raise lost(ref, old, actual)
        try:
            file.write(new.encode() + b"\n")
            file.close()  # fsync + rename over the ref; a full disk fails here
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        _discard(file)


def delete_ref(slot: WriterSlot, refs: DiskRefsContainer, ref: str, old: str) -> None:
    """Delete ``ref`` while holding ``<ref>.lock`` and ``packed-refs.lock``, if it holds ``old``."""
    name = ref.encode()
    path = Path(os.fsdecode(refs.refpath(name)))
    packed = Path(os.fsdecode(refs.path)) / "packed-refs"
    file = _lock_ref(path)
    packed_lock = None
    try:
        packed_lock = GitFile(os.fsencode(packed), "wb")  # never written: a new file is renamed in
        slot.hold_ref_lock(path.with_name(path.name + ".lock"), packed.with_name("packed-refs.lock"))
        lines = packed.read_bytes().splitlines(keepends=True) if packed.exists() else []
        kept, packed_sha = _without(lines, name)
        current = refs.read_loose_ref(name) or packed_sha
        actual = current.decode() if current else None
        if actual != old:
            raise lost(ref, old, actual)
        if packed_sha is not None:
            _replace(packed, b"".join(kept))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        if packed_lock is not None:
            _discard(packed_lock)
        _discard(file)


def _without(lines: list[bytes], name: bytes) -> tuple[list[bytes], bytes | None]:
    """packed-refs lines without ``name``'s line and the ``^<peeled>`` line after it, and the
    sha that line held (None: ``name`` is not packed)."""
    kept: list[bytes] = []
    found = None
    dropping = False
    for line in lines:
        if dropping and line.startswith(b"^"):
            continue
        sha, _, ref = line.rstrip(b"\r\n").partition(b" ")
        dropping = not line.startswith((b"#", b"^")) and ref == name
        if dropping:
            found = sha
        else:
            kept.append(line)
    return kept, found


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` (same mode) and rename it over ``path``, as git does; a
    kill in between leaves a stray ``expckpt-packed-refs-*`` file, never a half-written one."""
    fd, temp = tempfile.mkstemp(prefix="expckpt-packed-refs-", dir=path.parent)
    try:
        os.fchmod(fd, os.stat(path).st_mode & 0o777)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


class RecordingStore:
    """The object store as ``commit_tree_changes`` sees it: each loose object it writes is
    recorded in the writer's intent first, so a lock a kill leaves behind is provably ours."""

    def __init__(self, store: Any, slot: WriterSlot, git_dir: Path) -> None:
        self._store = store
        self._slot = slot
        self._objects = git_dir / "objects"

    def __getitem__(self, sha: bytes) -> ShaFile:
        return self._store[sha]

    def add_object(self, obj: ShaFile) -> None:
        sha = obj.id.decode()
        self._slot.will_write_object(self._objects / sha[:2] / f"{sha[2:]}.lock")
        self._store.add_object(obj)


def lost(ref: str, expected: str | None, actual: str | None) -> RefConflictError:
    """The error for a compare-and-swap that found ``actual`` where it expected ``expected``."""
    want = "to be absent" if expected is None else f"at {expected[:7]}"
    now = "is absent" if actual is None else f"is at {actual[:7]}"
    return RefConflictError(
        f"{ref} changed under us: expected it {want}, but it {now} (another process wrote it)",
        ref=ref,
        expected=expected,
        actual=actual,
    )


def _lock_ref(path: Path) -> Any:
    """Create ``<ref>.lock``; again when ``git pack-refs --prune`` removed the (empty) ref
    directory between our ``mkdir`` and ``open`` (git's own writers retry the same way)."""
    for attempt in range(100):
        try:
            ensure_dir_exists(os.fsencode(path.parent))
            return GitFile(os.fsencode(path), "wb")
        except FileNotFoundError:
            if attempt == 99:
                raise
            time.sleep(0.001)


def _discard(file: Any) -> None:
    """Release a dulwich ``GitFile`` that was not renamed into place, and remove its ``.lock``.

    After a failed write (disk full) the buffered data makes the first close fail again, but
    it closes the descriptor; the next attempt then removes the lock. Without this the lock
    stays behind and dulwich's finaliser prints an ``Exception ignored`` traceback later.
    """
    for _ in range(3):
        if file.closed:
            return
        with contextlib.suppress(OSError):
            file.abort()
