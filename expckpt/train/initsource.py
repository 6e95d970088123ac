"""Which file ``checkpoint.init_from`` names, checked before any training (no torch here).

    checkpoint:
      init_from: tidy-owl@5      # or: tidy-owl (its newest checkpoint), a commit, path/to/model.pt

A checkpoint is looked up in the records (``expckpt-meta``, validated on read); its weights are
the DVC cache object its record names (a directory checkpoint, DCP's shards: its manifest and
every file it lists), hashed again here, so a damaged or swapped object is refused rather than
trained on. A checkpoint that does not exist (never, or no longer: retention
and ``expckpt gc`` remove them) or whose object is gone stops the run with one line. A path is
read as it is (a directory only when it holds DCP's ``.metadata``); when its bytes are a known
checkpoint's, that checkpoint is the lineage. Which sources a handler can load is the handler's
to say (``init_from``): a file with any, a directory with ``DcpHandler``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from expckpt.serialize.atomic import md5_file
from expckpt.serialize.dirout import hash_dir
from expckpt.store.cache import DvcCache
from expckpt.errors import ConfigError, ExpCkptError, MissingCheckpointError
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project
from expckpt.store.records import CheckpointRecord, InitializedFrom, load_records
from expckpt.text import terminal_safe
from expckpt.train.wiring import Wiring

__all__ = ["InitSource", "find_source", "source_for"]

_HEX = re.compile(r"[0-9a-f]{7,40}")
_NAME_AT_STEP = re.compile(r"(.+)@([0-9]+)")


@dataclass(frozen=True)
class InitSource:
    """The weights a fresh trial starts from."""

    spec: str
    """What the user wrote in ``checkpoint.init_from``."""
    path: Path
    """The file to load (a DVC cache object, or the user's file)."""
    md5: str
    lineage: InitializedFrom | None
    """The checkpoint the file is (None: a file no checkpoint expckpt knows holds)."""
    files: Mapping[str, Path] | None = None
    """A directory checkpoint (DCP's shards): each file's path inside it -> where its verified bytes are."""

    @property
    def identity(self) -> dict[str, object]:
        """What each checkpoint of the trial carries, so a rerun knows its own chain from another."""
        return self.lineage.as_dict() if self.lineage else {"md5": self.md5}

    def describe(self) -> str:
        if self.lineage is None:
            return f"{terminal_safe(self.spec)} (md5 {self.md5[:8]})"
        return f"{terminal_safe(self.lineage.name)} ({self.lineage.commit[:7]})"


def _fail(spec: str, what: str, fix: str) -> ConfigError:
    return ConfigError(
        f"checkpoint.init_from is {terminal_safe(repr(spec))}: {what}; {fix}", key="checkpoint.init_from", value=spec
    )


def _prefer(records: Sequence[CheckpointRecord], baseline: str | None) -> list[CheckpointRecord]:
    """The records of this run's baseline when there are any (names repeat across baselines)."""
    here = [r for r in records if r.ref.baseline == baseline]
    return here or list(records)


def _pick(spec: str, records: Sequence[CheckpointRecord], baseline: str | None) -> CheckpointRecord | None:
    at = _NAME_AT_STEP.fullmatch(spec)
    if at:
        named = _prefer([r for r in records if r.name == spec], baseline)
        if named:
            return max(named, key=lambda r: r.time)
        if any(r.exp == at.group(1) for r in records):
            steps = sorted({r.step for r in records if r.exp == at.group(1)})
            raise _fail(
                spec,
                f"experiment {terminal_safe(at.group(1))} has no checkpoint at step {at.group(2)}"
                f" (it has steps {', '.join(map(str, steps[-10:]))}; retention or `expckpt gc` may have"
                " removed it)",
                "pick one `expckpt list` shows",
            )
        return None
    newest = _prefer([r for r in records if r.exp == spec], baseline)
    if newest:
        return max(newest, key=lambda r: (r.step, r.time))
    if _HEX.fullmatch(spec):
        hits = {r.commit: r for r in records if r.commit.startswith(spec)}
        if len(hits) > 1:
            raise _fail(spec, f"{len(hits)} checkpoints have commits starting so", "write more of the commit id")
        return next(iter(hits.values()), None)
    return None


def _from_record(spec: str, record: CheckpointRecord, rel_path: str, cache: DvcCache) -> InitSource:
    out = record.outs.get(rel_path)
    if out is None and len(record.outs) == 1:
        out = next(iter(record.outs.values()))
    if out is None:
        raise _fail(
            spec,
            f"checkpoint {terminal_safe(record.name)} has no output {terminal_safe(rel_path)}"
            f" (it has {terminal_safe(', '.join(record.outs))})",
            "pick a checkpoint of this stage",
        )
    problem = cache.verify(out.md5)
    if problem is not None:
        name = terminal_safe(record.name)
        raise MissingCheckpointError(
            f"checkpoint.init_from is {name}, but its weights (md5 {out.md5}) are {problem}, so the run"
            f" does not start; get them back with `dvc exp pull <remote> {name}`, or pick another checkpoint"
            " (`expckpt list`)",
            checkpoint=record.name,
        )
    lineage = InitializedFrom(record.exp, record.step, record.commit)
    files = None
    if out.md5.endswith(".dir"):
        files = {rel: cache.object_path(md5) for rel, md5 in cache.manifest(out.md5).items()}
    return InitSource(spec=spec, path=cache.object_path(out.md5), md5=out.md5, lineage=lineage, files=files)


def find_source(
    spec: str,
    *,
    rel_path: str,
    records: Sequence[CheckpointRecord],
    cache: DvcCache | None,
    workspace: Path,
    baseline: str | None = None,
) -> InitSource:
    """The checkpoint or file ``spec`` names; ``ConfigError``/``MissingCheckpointError`` (one
    line) when there is none or its weights are gone or damaged."""
    record = _pick(spec, records, baseline) if cache is not None else None
    if record is not None and cache is not None:
        return _from_record(spec, record, rel_path, cache)
    path = Path(spec) if Path(spec).is_absolute() else workspace / spec
    files = None
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise _fail(
                spec,
                "it is a directory without DCP's .metadata",
                "name a checkpoint file, a DCP checkpoint directory, or a checkpoint (exp@step, see `expckpt list`)",
            )
        md5, _, _, stats = hash_dir(path)
        files = {rel: path / rel for rel in sorted(stats)}
    if path.is_file() or files is not None:
        if files is None:
            md5, _ = md5_file(path)
        known = [r for r in records if any(o.md5 == md5 for o in r.outs.values())]
        lineage = None
        if known:
            r = max(known, key=lambda r: r.time)
            lineage = InitializedFrom(r.exp, r.step, r.commit)
        return InitSource(spec=spec, path=path, md5=md5, lineage=lineage, files=files)
    where = (
        "no checkpoint (`expckpt list`) and no file has that name"
        if cache is not None
        else ("outside `dvc exp run` (and a DVC project) only a file path can be used, and there is no such file")
    )
    raise _fail(
        spec,
        where,
        "use exp@step, an experiment name, a commit or a path to a checkpoint file;"
        " a checkpoint removed by retention or `expckpt gc` is gone",
    )


def source_for(wiring: Wiring, spec: str) -> InitSource:
    """``find_source`` with this run's checkpoints: the experiment's repository inside ``dvc exp
    run``, the project around the working directory outside (only a path without one)."""
    c = wiring.committer
    if c is not None:
        return find_source(
            spec,
            rel_path=wiring.rel_path,
            records=load_records(c.store),
            cache=c.cache,
            workspace=wiring.workspace,
            baseline=c.run.baseline,
        )
    try:
        project = Project.discover(env={})
        store = GitStore.open(project.root)
    except ExpCkptError:
        return find_source(spec, rel_path=wiring.rel_path, records=[], cache=None, workspace=wiring.workspace)
    try:
        return find_source(
            spec,
            rel_path=wiring.rel_path,
            records=load_records(store),
            cache=DvcCache.for_project(project.root, store.git_dir),
            workspace=wiring.workspace,
            baseline=store.head(),
        )
    finally:
        store.close()
