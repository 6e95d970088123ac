"""``expckpt verify``: rehash every checkpoint's objects before relying on them.

The usual way objects go missing is ``dvc gc -w`` (or ``-a``/``-T``) without
``--all-experiments``: DVC then keeps only the workspace's checkpoint. ``remedy`` says so, and
how to get them back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from expckpt.store.cache import DvcCache
from expckpt.store.gitstore import GitStore
from expckpt.store.records import CheckpointRecord
from expckpt.text import terminal_safe
from expckpt.ops.unsafe import ADVICE, unsafe_output

__all__ = ["Problem", "locked_outputs", "remedy", "removed_meanwhile", "verify_records"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def locked_outputs(lock: bytes | None) -> dict[str, str | None]:
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
    missing_object: bool = False
    """The checkpoint's cache object is not there (``dvc gc`` took it, or it was never pulled)."""

    def __str__(self) -> str:
        return terminal_safe(f"{self.record.name} ({self.record.commit[:7]}): {self.what}")


def remedy(problems: Iterable[Problem]) -> str | None:
    """One line on what to do about missing objects (``None`` when none is missing)."""
    names = sorted({p.record.name for p in problems if p.missing_object})
    if not names:
        return None
    example = terminal_safe(names[0])
    one = len(names) == 1
    them = "it" if one else "them"
    return (
        f"{len(names)} checkpoint{' has' if one else 's have'} no cache object: a plain `dvc gc -w`"
        " removes every checkpoint's object but the workspace's, so collect with"
        f" `dvc gc -w --all-experiments` (or `expckpt gc`); get {them} back with"
        f" `dvc exp pull <remote> {example}`{'' if one else ' (each one that was pushed)'},"
        f" or drop {them} with `dvc exp remove {example}`"
    )


def verify_records(records: Iterable[CheckpointRecord], store: GitStore, cache: DvcCache) -> list[Problem]:
    """Check that each checkpoint's commit, dvc.lock and cache objects are all intact."""
    problems: list[Problem] = []
    checked: dict[str, str | None] = {}
    for record in records:
        if not store.has_commit(record.commit):
            problems.append(Problem(record, "commit object is missing"))
            continue
        locked = locked_outputs(store.read_file(record.commit, "dvc.lock"))
        for path, out in record.outs.items():
            if locked.get(path) != out.md5:
                problems.append(Problem(record, f"dvc.lock does not record {path} as {out.md5}"))
            unsafe = unsafe_output(cache, path, out.md5)
            if unsafe:
                problems.append(Problem(record, f"{unsafe}: {ADVICE}"))
                continue
            if out.md5 not in checked:
                try:
                    checked[out.md5] = cache.verify(out.md5)
                except FileNotFoundError:  # freed while it was being hashed
                    checked[out.md5] = "missing from the cache"
            if checked[out.md5] is not None:
                missing = not cache.has(out.md5)
                problems.append(Problem(record, f"{path} (md5 {out.md5}) is {checked[out.md5]}", missing))
    # Retention and gc delete the ref first and the objects after: a checkpoint whose ref is gone
    # (or moved) by now was removed while we looked, not broken. One whose ref still holds it is.
    gone = {r.commit for r in removed_meanwhile([p.record for p in problems], store)}
    return [p for p in problems if p.record.commit not in gone]


def removed_meanwhile(records: Iterable[CheckpointRecord], store: GitStore) -> list[CheckpointRecord]:
    """The checkpoints whose ref no longer holds their commit (retention or gc removed them)."""
    return [r for r in records if store.get_ref(r.ref.ref) != r.commit]
