"""Git's ``.lock`` files, and the one case in which expckpt removes one.

Git and dulwich lock a file ``X`` by creating ``X.lock`` exclusively and renaming it over ``X``
when the write is complete. A writer killed in between leaves the ``.lock`` behind and every
later write of ``X`` fails; but removing a lock that a live ``git update-ref`` or ``git
pack-refs`` holds makes *that* process fail or lose its update. So expckpt removes only a lock
it can prove is its own, left by one of its writers that is gone:

* Every Git write of expckpt runs inside ``writer_slot``: an exclusive ``flock`` on
  ``.git/expckpt/git-writes.lock`` (the kernel drops it when its holder dies, however it dies).
* Inside it, the writer records in ``.git/expckpt/git-writes.intent`` the locks it holds --
  for a ref, the device and inode of the ``.lock`` it has just created (a delete adds
  ``packed-refs.lock``'s); for a loose object (whose lock dulwich creates), its path, a name
  git never uses -- with its pid and process start time, and blanks the record when the write
  is over.

Whoever holds the flock and finds a record that is not blank knows its writer died mid-write
(its pid is checked as well). A ``.lock`` is removed only when it is the very file that record
names; any other ``.lock`` belongs to someone else, and the caller waits for it (bounded) and
then fails with one line naming the file.

The record is overwritten in place, never truncated or grown, so writing it needs no new disk
space: it still works on a full disk, where the ref write it guards is the one that fails.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from expckpt.store.gclock import pid_alive

__all__ = ["WriterSlot", "process_start", "writer_slot"]

_RECORD = 256
_BLANK = b" " * (_RECORD - 1) + b"\n"


def process_start(pid: int) -> int:
    """The start time of process ``pid`` in clock ticks since boot (0 when unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` (started at ``start``) still runs; a reused pid is not it."""
    if not pid_alive(pid):
        return False
    now = process_start(pid)
    return not (start and now and now != start)


class WriterSlot:
    """The intent record of the one expckpt Git writer that holds the writers' flock."""

    def __init__(self, git_dir: Path, fd: int) -> None:
        self.git_dir = git_dir
        self._fd = fd
        self._pid = os.getpid()
        self._start = process_start(self._pid)

    def _put(self, fields: str) -> None:
        """One line at offset 0 (what follows its newline is ignored), written in place."""
        data = fields.encode() + b"\n"
        if len(data) > _RECORD:
            raise ValueError(f"intent record too long: {fields!r}")
        if os.pwrite(self._fd, data + _BLANK[len(data) :], 0) < len(data):
            raise OSError(errno.EFBIG, "could not record the Git write in progress", str(self.git_dir / "expckpt"))

    def hold_ref_lock(self, lock: Path, *more: Path) -> None:
        """Record the ``.lock`` files this writer has just created (by device and inode)."""
        ids = " ".join(f"{st.st_dev} {st.st_ino}" for st in map(os.stat, (lock, *more)))
        self._put(f"R {self._pid} {self._start} {ids}")

    def will_write_object(self, lock: Path) -> None:
        """Record the loose-object ``.lock`` dulwich is about to create (by its path)."""
        self._put(f"O {self._pid} {self._start} {lock.relative_to(self.git_dir).as_posix()}")

    def clear(self) -> None:
        """The write is over (done or failed and cleaned up): nothing of ours is locked."""
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, _BLANK, 0)

    def _record(self) -> list[str]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return os.pread(self._fd, _RECORD, 0).decode().split("\n", 1)[0].split()
        return []

    def owns(self, lock: Path) -> bool:
        """Whether ``lock`` is the file the record names, left by a writer that is gone (or by
        this process, whose write is over)."""
        fields = self._record()
        if (
            not fields
            or len(fields) not in {"R": (5, 7), "O": (4,)}.get(fields[0], ())
            or not (fields[1].isdigit() and fields[2].isdigit())
        ):
            return False
        kind, pid, start = fields[0], int(fields[1]), int(fields[2])
        if pid != self._pid and _alive(pid, start):
            return False
        try:
            if kind == "R":
                st = os.stat(lock)
                return [str(st.st_dev), str(st.st_ino)] in (fields[3:5], fields[5:7])
            if kind == "O":
                return lock.relative_to(self.git_dir).as_posix() == fields[3] and lock.exists()
        except (OSError, ValueError):
            return False
        return False

    def recover(self) -> None:
        """On taking the slot: a record still there is a dead writer's (its write never got to
        blank it); remove the lock it names, if that lock is still there, and blank it.

        Done at once, not when a later write trips on the lock: the next write (a tree, a
        commit) would otherwise blank the record and leave the lock unprovable. A ref lock is
        found by its device and inode among ``refs/**.lock`` and ``packed-refs.lock`` (the
        record stays small enough to be rewritten in place on a full disk).
        """
        fields = self._record()
        if not fields:
            return
        if fields[0] == "O" and len(fields) == 4:
            candidates = [self.git_dir / fields[3]]
        elif fields[0] == "R":
            candidates = [*(self.git_dir / "refs").rglob("*.lock"), self.git_dir / "packed-refs.lock"]
        else:
            candidates = []
        for lock in candidates:
            if self.owns(lock):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        if self.owns_nothing_alive():
            self.clear()

    def owns_nothing_alive(self) -> bool:
        """Whether the record is not a live writer's (blank, malformed, or its writer is gone)."""
        fields = self._record()
        if len(fields) < 3 or not (fields[1].isdigit() and fields[2].isdigit()):
            return True
        return int(fields[1]) == self._pid or not _alive(int(fields[1]), int(fields[2]))

    def remove_if_owned(self, lock: Path) -> bool:
        """Remove ``lock`` if ``owns`` proves it is ours; report whether the write may go on."""
        if not self.owns(lock):
            return False
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        self.clear()
        return True


@contextlib.contextmanager
def writer_slot(git_dir: Path) -> Iterator[WriterSlot]:
    """Hold the writers' flock and their intent record for one Git write."""
    directory = Path(git_dir) / "expckpt"
    directory.mkdir(parents=True, exist_ok=True)
    flock_fd = os.open(directory / "git-writes.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(flock_fd, fcntl.LOCK_EX)
        fd = os.open(directory / "git-writes.intent", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _RECORD:  # first use: the only write that grows the file
                os.pwrite(fd, _BLANK, 0)
            slot = WriterSlot(Path(git_dir), fd)
            slot.recover()
            yield slot
        finally:
            os.close(fd)
    finally:
        os.close(flock_fd)
