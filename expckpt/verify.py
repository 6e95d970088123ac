"""``expckpt verify``: rehash every checkpoint's objects before relying on them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from expckpt.cache import DvcCache
from expckpt.gitstore import GitStore
from expckpt.records import CheckpointRecord

__all__ = ["Problem", "verify_records"]

_OUT = re.compile(r"- path: (?P<path>\S+)\n\s+hash: md5\n\s+md5: (?P<md5>[0-9a-f]{32})\n")


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
        lock = store.read_file(record.commit, "dvc.lock")
        locked = {m["path"]: m["md5"] for m in _OUT.finditer(lock.decode(errors="replace"))} if lock else {}
        for path, out in record.outs.items():
            if locked.get(path) != out.md5:
                problems.append(Problem(record, f"dvc.lock does not record {path} as {out.md5}"))
            if out.md5 not in checked:
                checked[out.md5] = cache.verify(out.md5)
            if checked[out.md5] is not None:
                problems.append(Problem(record, f"{path} (md5 {out.md5}) is {checked[out.md5]}"))
    return problems
