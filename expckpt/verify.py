"""``expckpt verify``: rehash every checkpoint's objects before relying on them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from expckpt.cache import DvcCache
from expckpt.gitstore import GitStore
from expckpt.records import CheckpointRecord

__all__ = ["Problem", "verify_records"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _locked_outputs(lock: bytes | None) -> dict[str, str | None]:
    """Output path -> md5 over every stage of a dvc.lock (empty if missing or unreadable)."""
    try:
        data = yaml.load(lock, Loader=_Loader) if lock else None
    except yaml.YAMLError:
        return {}
    found: dict[str, str | None] = {}
    stages = data.get("stages") if isinstance(data, dict) else None
    for stage in stages.values() if isinstance(stages, dict) else []:
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            if isinstance(out, dict) and isinstance(out.get("path"), str):
                found[out["path"].rstrip("/")] = out.get("md5")  # a directory: `ckpt/` as declared
    return found


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one checkpoint."""

    record: CheckpointRecord
    what: str

    def __str__(self) -> str:
        return f"{self.record.name} ({self.record.commit[:7]}): {self.what}"


def verify_records(records: Iterable[CheckpointRecord], store: GitStore, cache: DvcCache) -> list[Problem]:
    """Check that each checkpoint's commit, dvc.lock and cache objects are all intact."""
    problems: list[Problem] = []
    checked: dict[str, str | None] = {}
    for record in records:
        if not store.has_commit(record.commit):
            problems.append(Problem(record, "commit object is missing"))
            continue
        locked = _locked_outputs(store.read_file(record.commit, "dvc.lock"))
        for path, out in record.outs.items():
            if locked.get(path) != out.md5:
                problems.append(Problem(record, f"dvc.lock does not record {path} as {out.md5}"))
            if out.md5 not in checked:
                checked[out.md5] = cache.verify(out.md5)
            if checked[out.md5] is not None:
                problems.append(Problem(record, f"{path} (md5 {out.md5}) is {checked[out.md5]}"))
    return problems
