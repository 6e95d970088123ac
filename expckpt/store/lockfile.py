"""The dvc.lock a checkpoint commit carries, written by DVC's own serialisation of the stage.

DVC loads the stage (``foreach``/``matrix``/``vars``, params from any file, directory deps),
hashes its deps and params through its state database, and serialises the lock entry with
``to_single_stage_lockfile``: the checkpoint commit's dvc.lock is what ``dvc commit`` would write
at that step. Only DVC's in-process objects are used: no repo lock and no rwlock is taken (the
running ``dvc exp run`` holds the stage's outputs write-locked).

Per checkpoint: the checkpoint output gets the hash expckpt computed while writing it (and DVC's
state database learns it, so DVC never hashes that file again); every other output that exists
is hashed by DVC (a stat when unchanged) and, if cached, copied into the cache so the commit can
be checked out; an output not produced yet keeps the entry of the dvc.lock the run started from,
or is left out. Uncached outputs (``cache: false`` metrics) go into the commit as Git files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from expckpt.errors import ProjectError
from expckpt.store.project import Project
from expckpt.store.records import OutputHash

if TYPE_CHECKING:
    from dvc.output import Output
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

__all__ = ["LockBuilder", "RenderedLock"]


@dataclass(frozen=True)
class RenderedLock:
    """dvc.lock for one checkpoint, and the uncached outputs' bytes it hashed (Git files)."""

    lock: bytes
    files: Mapping[str, bytes] = field(default_factory=dict)


def load_stage(repo: Repo, target: str) -> PipelineStage:
    """The stage ``target`` names (``DVC_STAGE``: ``train``, ``train@lr1``, ``sub/dvc.yaml:train``)."""
    from dvc.exceptions import DvcException
    from dvc.utils import parse_target

    path, name = parse_target(target)
    dvcfile = os.path.join(repo.root_dir, path or "dvc.yaml")
    try:
        return repo.stage.load_one(path=dvcfile, name=name)
    except DvcException as exc:
        raise ProjectError(
            f"DVC cannot load stage {target!r} from {dvcfile}: {exc}; check the stage name and dvc.yaml",
            path=dvcfile,
        ) from exc


_OUTS_MARK = "expckpt-outs-go-here"


class LockBuilder:
    """Renders dvc.lock for one stage with fresh output hashes, through DVC's objects.

    cmd, deps and params are fixed for the run and ``outs`` is the last key of DVC's lock entry,
    so DVC's YAML writer (pure Python, ~4 ms for a whole dvc.lock) renders the file once around a
    marker; each checkpoint only renders its ``outs`` block.
    """

    def __init__(self, *, repo: Repo, stage: PipelineStage, head: str, tail: str) -> None:
        self._repo = repo
        self._stage = stage
        self._head = head
        self._tail = tail
        root = Path(repo.root_dir)
        self._by_path = {Path(out.fs_path).relative_to(root).as_posix(): out for out in stage.outs}

    @classmethod
    def prepare(cls, project: Project, stage: str) -> LockBuilder:
        """Load the stage and hash its deps and params once per run (they do not change)."""
        from dvc.repo import Repo
        from dvc.stage.serialize import to_single_stage_lockfile
        from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

        repo = Repo(str(project.workspace))
        loaded = load_stage(repo, stage)
        # A missing dep is written as DVC's --allow-missing writes it (path, no hash): the run
        # has started, and a checkpoint is worth more than refusing the lock entry.
        loaded.save_deps(allow_missing=True)
        lock_path = project.workspace / "dvc.lock"
        try:
            base = parse_yaml_for_update(lock_path.read_text(), str(lock_path))
        except FileNotFoundError:
            base = {}
        if not base:
            base["schema"] = "2.0"  # as Lockfile.dump_stages starts a new dvc.lock
        entry = to_single_stage_lockfile(loaded)
        entry["outs"] = _OUTS_MARK
        base.setdefault("stages", {})[loaded.name] = entry
        text = dumps_yaml(base)
        marker = f"    outs: {_OUTS_MARK}\n"
        at = text.index(marker)
        return cls(repo=repo, stage=loaded, head=text[:at], tail=text[at + len(marker) :])

    @property
    def stage_name(self) -> str:
        return str(self._stage.name)

    def remember(self, workspace_file: Path, out: OutputHash) -> None:
        """Record ``out`` as the hash of ``workspace_file`` in DVC's state database (keyed by
        inode, mtime and size), so DVC's own commit at the end of the run does not re-hash it."""
        from dvc_data.hashfile.hash_info import HashInfo

        self._repo.state.save(os.fspath(workspace_file), self._repo.fs, HashInfo("md5", out.md5))

    def render(self, outs: Mapping[str, OutputHash]) -> RenderedLock:
        """dvc.lock with ``outs`` (the checkpoint outputs) and the other outputs as they are now."""
        from dvc.stage.serialize import to_single_stage_lockfile
        from dvc.utils.serialize import dumps_yaml
        from dvc_data.hashfile.hash_info import HashInfo
        from dvc_data.hashfile.meta import Meta

        files: dict[str, bytes] = {}
        for path, out in self._by_path.items():
            given = outs.get(path)
            if given is not None:
                out.hash_name = "md5"
                out.hash_info = HashInfo("md5", given.md5)
                out.meta = Meta(size=given.size, nfiles=given.nfiles, isdir=given.nfiles is not None)
            elif out.exists:
                self._refresh(path, out, files)
        unknown = set(outs) - set(self._by_path)
        if unknown:
            raise ProjectError(
                f"{', '.join(sorted(unknown))} is not an output of stage {self.stage_name!r};"
                " declare it under the stage's outs in dvc.yaml",
                path=self._stage.path,
            )
        produced = {o.def_path for o in self._stage.outs if o.hash_info}  # def_path: as dvc.lock names it
        entries = [o for o in to_single_stage_lockfile(self._stage).get("outs", []) if o["path"] in produced]
        block = ""
        if entries:
            text = dumps_yaml({"stages": {self.stage_name: {"outs": entries}}})
            block = text[text.index("\n    outs:\n") + 1 :]
        return RenderedLock((self._head + block + self._tail).encode(), files)

    def _refresh(self, path: str, out: Output, files: dict[str, bytes]) -> None:
        """Hash an output the way DVC does; put a cached one in the cache (a copy or reflink,
        never a hard link: training may still write to it), an uncached one in ``files``."""
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.hash_info import HashInfo
        from dvc_data.hashfile.meta import Meta
        from dvc_data.hashfile.transfer import transfer

        out.hash_name = "md5"
        if not out.use_cache and out.isfile():
            data = Path(out.fs_path).read_bytes()
            out.hash_info = HashInfo("md5", hashlib.md5(data, usedforsecurity=False).hexdigest())
            out.meta = Meta(size=len(data))
            files[path] = data
            return
        odb = out.cache if out.use_cache else out.local_cache
        staging, out.meta, obj = build(  # dvc-data's public build, which DVC's Output wraps
            odb,
            out.fs_path,
            out.fs,
            "md5",
            ignore=out.dvcignore,
            dry_run=not out.use_cache,
            checksum_jobs=out.fs.hash_jobs,
        )
        out.hash_info = obj.hash_info
        if out.use_cache:
            transfer(staging, out.cache, {obj.hash_info}, shallow=False, hardlink=False)
        else:
            root = Path(out.fs_path)
            workspace = Path(self._repo.root_dir)
            for directory, _, names in os.walk(root):
                for name in names:
                    full = Path(directory, name)
                    files[full.relative_to(workspace).as_posix()] = full.read_bytes()
