"""One checkpoint, published in order: cache object, pending mark, workspace file, Git commit,
workspace dvc.lock, ref, note (which replaces the pending mark).

Each step makes the next one safe: the ref (what users and DVC see) moves only after its commit
and cache object exist, and the workspace note only after the ref. A crash at any point leaves
either the previous checkpoint or the new one complete, never half of one.

Who may write ``<exp>@<step>``: DVC guards only the name ``<exp>``, so expckpt guards the
checkpoint names itself. **A run never re-points an ``<exp>@<step>`` that is not its own.**

* The ref does not exist: it is created with a create-only compare-and-swap
  (``set_ref(ref, new, old=None)``). Of two runs racing for it (two queued runs with the same
  name), exactly one wins; the other refuses, so two runs never interleave into one chain.
* The ref exists and holds a commit this ``Committer`` published itself (the same step saved
  again by the same run): it is replaced with ``old=`` that commit, again compare-and-swap.
* Anything else -- a checkpoint of an earlier run of the same name (after ``dvc exp remove``,
  ``expckpt reset``, or ``dvc exp apply <exp>@<k>`` and a new run), of a concurrent run, or a
  ref expckpt did not write -- is refused with one line naming it and suggesting a free name.
  A run resumed after a crash never needs more: it continues after the newest checkpoint its
  workspace file matches, so the steps it writes do not exist yet.

``check_name(start_step)`` applies the same rule before training starts: any ``<exp>@<k>`` with
``k >= start_step`` on this baseline means another run owns the steps ahead, and the run is
refused before it spends an epoch. ``publish`` checks again before touching the workspace file,
and the compare-and-swap at the ref settles any race left.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from expckpt.serialize.atomic import WrittenFile, _storage_error, atomic_write_bytes
from expckpt.store.cache import DvcCache
from expckpt.policy.config import CheckpointConfig
from expckpt.serialize.dirout import WrittenDir
from expckpt.errors import RefConflictError
from expckpt.store.execdir import keep_exec_dir
from expckpt.store.gclock import gc_lock
from expckpt.store.gitstore import GitStore
from expckpt.store.lockfile import LockBuilder
from expckpt.phases import phase
from expckpt.store.project import Project, RunContext
from expckpt.store.records import CheckpointRecord, InitializedFrom, OutputHash, format_message
from expckpt.store.refs import EXEC_APPLY, EXPS_PREFIX, CheckpointRef
from expckpt.store.session import SessionNote

__all__ = ["Committer", "Written"]

Written = WrittenFile | WrittenDir
"""A checkpoint output ready to publish: one file, or a directory of files."""


@contextlib.contextmanager
def _git_write_errors(git_dir: Path) -> Iterator[None]:
    """Git objects or refs that cannot be written (disk full, ...) become one StorageError."""
    try:
        yield
    except OSError as exc:
        raise _storage_error(Path(exc.filename or git_dir), exc) from exc


class Committer:
    """Publishes checkpoints of one ``dvc exp run`` as experiment refs ``<exp>@<step>``."""

    def __init__(
        self,
        *,
        project: Project,
        run: RunContext,
        store: GitStore,
        cache: DvcCache,
        checkpoint_path: str,
        live_paths: list[str],
    ) -> None:
        self.project = project
        self.run = run
        self.store = store
        self.cache = cache
        self.checkpoint_path = checkpoint_path
        self.checkpoint_paths = [checkpoint_path]
        """Every checkpoint output, in the order ``publish`` gets them (the first is ``checkpoint_path``)."""
        self.live_paths = live_paths
        self._base_tree: str | None = None
        self._published = False
        self._origin: str | None = None
        """The checkpoint this run resumed from (recorded in each of its checkpoints)."""
        self._lock: LockBuilder | None = None
        self._own: dict[str, str] = {}
        """ref -> commit of every checkpoint this run published (the refs it may replace)."""

    # -- who owns <exp>@<step> ------------------------------------------------------------------
    def check_name(self, start_step: int) -> None:
        """Refuse, before training, a run whose steps ``>= start_step`` already exist as
        checkpoints of another run of this experiment name (see the module docstring)."""
        prefix = f"{EXPS_PREFIX}{self.run.baseline[:2]}/{self.run.baseline[2:]}/"
        taken = []
        for ref, commit in self.store.ref_targets(prefix).items():
            parsed = CheckpointRef.parse(ref)
            if (
                parsed
                and parsed.exp == self.run.exp_name
                and parsed.step >= start_step
                and self._own.get(ref) != commit
            ):
                taken.append((parsed.step, parsed, commit))
        if taken:
            taken.sort(key=lambda t: t[0])
            _, first, commit = taken[0]
            raise self._taken(first, commit, [t[1] for t in taken])

    def _check_step(self, ref: CheckpointRef) -> None:
        existing = self.store.get_ref(ref.ref)
        if existing is not None and self._own.get(ref.ref) != existing:
            raise self._taken(ref, existing)

    def _taken(self, ref: CheckpointRef, commit: str | None, every: Sequence[CheckpointRef] = ()) -> RefConflictError:
        """The one line for a checkpoint name another run holds, with a free name to use; with
        ``every`` (all the checkpoints in the way, ``ref`` first), the range and one command
        that removes them all."""
        prefix = f"{EXPS_PREFIX}{ref.baseline[:2]}/{ref.baseline[2:]}/"
        used = {p.exp for p in map(CheckpointRef.parse, self.store.ref_targets(prefix)) if p}
        n = 2
        while f"{ref.exp}-{n}" in used:
            n += 1
        held = f"{commit[:7]}, from another run of {ref.exp!r}" if commit else f"written by another run of {ref.exp!r}"
        what, exists, it = f"checkpoint {ref.name!r}", "exists", "it"
        if len(every) > 1:
            what = f"checkpoints {ref.name!r} to {every[-1].name!r}"
            exists, it, held = "exist", "them", f"{len(every)} of them; {ref.name} is {held}"
        names = " ".join(r.name for r in every) if len(every) > 1 else ref.name
        return RefConflictError(
            f"{what} already {exists} ({held}); run with another name,"
            f" e.g. dvc exp run -n {ref.exp}-{n}, or remove {it} first: dvc exp remove {names}",
            ref=ref.ref,
            actual=commit,
        )

    def _write_ref(self, ref: CheckpointRef, commit: str) -> None:
        """Compare-and-swap the checkpoint's ref: create it, or replace only our own commit."""
        try:
            self.store.set_ref(ref.ref, commit, self._own.get(ref.ref))
        except RefConflictError as exc:
            raise self._taken(ref, exc.actual) from exc
        self._own[ref.ref] = commit

    def prepare(self) -> None:
        """Snapshot the tracked files and dependency hashes once per run (they don't change)."""
        if self._base_tree is None:
            self._base_tree = self.store.snapshot_tracked(self.project.workspace, self.run.baseline)
            self._lock = LockBuilder.prepare(self.project, self.run.stage or "train")

    def read_live_files(self) -> dict[str, bytes]:
        """Current content of the metrics and plots files that go into each checkpoint commit."""
        files: dict[str, bytes] = {}
        workspace = self.project.workspace
        for rel in self.live_paths:
            path = workspace / rel
            if path.is_file():
                files[rel] = path.read_bytes()
            elif path.is_dir():
                for root, _, names in os.walk(path):
                    for name in names:
                        full = Path(root, name)
                        files[full.relative_to(workspace).as_posix()] = full.read_bytes()
        return files

    def publish(
        self,
        written: Written | Sequence[Written],
        *,
        step: int,
        metrics: Mapping[str, float],
        live_files: Mapping[str, bytes],
        parent: str | None,
        settings: CheckpointConfig | None = None,
        initialized_from: InitializedFrom | None = None,
        paused: bool = False,
    ) -> CheckpointRecord:
        """Publish complete temp files (one per checkpoint output, in ``checkpoint_paths``
        order) as checkpoint ``<exp>@<step>``: one commit and one ref for all; return its record.
        ``settings`` (the run's effective checkpoint settings) are recorded in its metadata."""
        items = [written] if isinstance(written, (WrittenFile, WrittenDir)) else list(written)
        paths = self.checkpoint_paths[: len(items)]
        self.prepare()
        assert self._base_tree is not None and self._lock is not None
        ref = CheckpointRef(baseline=self.run.baseline, exp=self.run.exp_name, step=step)
        self._check_step(ref)  # refuse another run's checkpoint name before touching the workspace
        phase("after-temp", step)
        with gc_lock(self.store.git_dir, exclusive=False), _git_write_errors(self.store.git_dir):
            for item in items:  # every object of every output in the cache before anything moves
                if isinstance(item, WrittenDir):
                    self.cache.add_dir(item)
                else:
                    self.cache.add(item.tmp, item.md5, item.size)
            phase("after-cache", step)
            SessionNote.mark_pending(self.project.workspace, self.checkpoint_path, ref.ref, items[0].md5)
            for item in items:
                item.publish()
            phase("after-publish", step)

            outs = {
                path: OutputHash(i.md5, i.size, i.nfiles if isinstance(i, WrittenDir) else None)
                for path, i in zip(paths, items)
            }
            # DVC's state db learns the hash, so `dvc exp run`'s own commit does not re-hash it.
            for path, item in zip(paths, items):
                self._lock.remember(item.dest, outs[path])
            rendered = self._lock.render(outs)
            files: dict[str, bytes | None] = {**live_files, **rendered.files, "dvc.lock": rendered.lock}
            tree = self.store.tree_with_files(self._base_tree, files)
            now = time.time()
            resumed = parent is not None and not self._published
            if resumed:
                self._origin = parent  # every later checkpoint of this run names it too
            recorded = settings.recorded() if settings is not None else None
            message = format_message(
                ref,
                parent=parent,
                outs=outs,
                metrics=metrics,
                time=now,
                resumed=resumed,
                settings=recorded,
                origin=self._origin,
                initialized_from=initialized_from,
                paused=paused,
            )
            commit = self.store.write_commit(tree, [self.run.baseline], message)
            phase("after-commit", step)
            # The workspace dvc.lock follows the checkpoint too: `dvc exp run` starts by checking
            # outputs out of it (force), so after a crash it puts back this checkpoint's file, not the
            # one of whatever run wrote dvc.lock before. Written before the ref: a crash in between
            # leaves a file no ref names, which resuming rolls back (see Checkpointer.restore).
            atomic_write_bytes(self.project.workspace / "dvc.lock", rendered.lock, durable=False)
            phase("after-lock", step)

            self._write_ref(ref, commit)
            phase("after-ref", step)
            keep_exec_dir(self.store.git_dir)  # `git gc` during the run must not break DVC's end of it

            for path, item in zip(paths, items):
                st = os.stat(item.dest)
                SessionNote(
                    ref=ref.ref,
                    commit=commit,
                    md5=item.md5,
                    size=item.size,
                    step=step,
                    mtime_ns=st.st_mtime_ns,
                    inode=st.st_ino,
                    applied=self.store.get_ref(EXEC_APPLY),
                    files={k: list(v) for k, v in item.stats().items()} if isinstance(item, WrittenDir) else None,
                ).write(self.project.workspace, path)
            SessionNote.clear_pending(self.project.workspace, self.checkpoint_path)
            phase("after-note", step)
            self._published = True
            return CheckpointRecord(
                ref=ref,
                commit=commit,
                parent=parent,
                outs=outs,
                metrics=dict(metrics),
                time=now,
                resumed=resumed,
                settings=settings,
                origin=self._origin,
                initialized_from=initialized_from,
                paused=paused,
            )

    def restore_lock(self, record: CheckpointRecord) -> None:
        """Make the workspace dvc.lock the one of ``record``'s commit again."""
        lock = self.store.read_file(record.commit, "dvc.lock")
        if lock is not None:
            atomic_write_bytes(self.project.workspace / "dvc.lock", lock, durable=False)
