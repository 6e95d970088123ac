"""``expckpt gc``: remove checkpoint refs out of scope or policy, then the cache they alone used.

Order matters (Determined PR #7967 leaked storage by doing it the other way): refs go first,
then only cache objects that (a) expckpt itself wrote and (b) no remaining ref, branch, tag or
the workspace still needs. Refs and objects expckpt did not write are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from expckpt.cache import DvcCache
from expckpt.catalog import Catalog
from expckpt.errors import ConfigError
from expckpt.gclock import gc_lock
from expckpt.gitstore import GitStore
from expckpt.policy import AnyOf, CheckpointInfo, KeepBest, KeepLast, KeepNewest, KeepPolicy
from expckpt.records import CheckpointRecord
from expckpt.session import SessionNote

__all__ = ["GcPlan", "GcScope", "execute_gc", "plan_gc"]

_MD5 = re.compile(rb"md5: ([0-9a-f]{32}(?:\.dir)?)\b")


@dataclass(frozen=True, kw_only=True)
class GcScope:
    """Which baselines' checkpoints to keep (DVC 2's ``exp gc`` flags)."""

    workspace: bool = False
    all_branches: bool = False
    all_tags: bool = False
    all_commits: bool = False

    def __post_init__(self) -> None:
        if not (self.workspace or self.all_branches or self.all_tags or self.all_commits):
            raise ConfigError(
                "say which checkpoints to keep: --workspace (experiments based on HEAD),"
                " --all-branches, --all-tags or --all-commits",
                key="scope",
            )


@dataclass
class GcPlan:
    """What a gc run removes: checkpoint refs, then cache objects (md5 -> bytes)."""

    remove: list[CheckpointRecord] = field(default_factory=list)
    keep: list[CheckpointRecord] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(self.objects.values())


def _kept_baselines(store: GitStore, scope: GcScope) -> set[str]:
    keep: set[str] = set()
    if scope.workspace:
        keep.add(store.git("rev-parse", "HEAD").strip())
    if scope.all_commits:
        keep.update(store.git("rev-list", "--branches", "--tags", "HEAD").split())
        return keep
    listing = store.git("for-each-ref", "--format=%(refname) %(objectname) %(*objectname)", "refs/heads", "refs/tags")
    for line in listing.splitlines():
        name, *shas = line.split()
        if (scope.all_branches and name.startswith("refs/heads/")) or (
            scope.all_tags and name.startswith("refs/tags/")
        ):
            keep.add(shas[-1])
    return keep


def _retention(keep_last: int | None, keep_best: int | None, metric: str | None, mode: str) -> KeepPolicy | None:
    if keep_last is None and not keep_best:
        return None
    policies: list[KeepPolicy] = [KeepNewest()]
    if keep_last is not None:
        policies.append(KeepLast(n=keep_last))
    if keep_best:
        if not metric:
            raise ConfigError("--keep-best needs --metric (the metric to rank by, e.g. acc)", key="metric")
        policies.append(KeepBest(k=keep_best, metric=metric, mode=mode))
    return AnyOf(policies=policies)


def _needed_objects(store: GitStore, remaining_refs: Iterable[str], workspace: Path) -> set[str]:
    """md5s that dvc.lock files of every commit reachable from ``remaining_refs`` point to."""
    needed: set[str] = set()
    tips = "\n".join(remaining_refs)
    commits = store.git("rev-list", "--stdin", input=tips + "\n").split() if tips else []
    if commits:
        blobs = store.git("cat-file", "--batch", input="".join(f"{c}:dvc.lock\n" for c in commits), binary=True)
        needed.update(m.decode() for m in _MD5.findall(blobs))
    lock = workspace / "dvc.lock"
    if lock.is_file():
        needed.update(m.decode() for m in _MD5.findall(lock.read_bytes()))
    for note in (workspace / ".dvc" / "tmp" / "expckpt").glob("*.json"):
        parsed = SessionNote.read(workspace, note.stem.replace("__", "/"))
        if parsed is not None:
            needed.add(parsed.md5)
    return needed


def plan_gc(
    store: GitStore,
    cache: DvcCache,
    workspace: Path,
    scope: GcScope,
    *,
    keep_last: int | None = None,
    keep_best: int | None = None,
    metric: str | None = None,
    mode: str = "max",
) -> GcPlan:
    policy = _retention(keep_last, keep_best, metric, mode)
    catalog = Catalog.load(store)
    baselines = _kept_baselines(store, scope)
    plan = GcPlan()
    for chain in catalog.chains():
        if chain.baseline not in baselines:
            plan.remove.extend(chain.records)
            continue
        if policy is None:
            plan.keep.extend(chain.records)
            continue
        infos = [CheckpointInfo(step=r.step, metrics=r.metrics, time=r.time) for r in chain.records]
        for record, keep in zip(chain.records, policy.should_keep(infos)):
            (plan.keep if keep else plan.remove).append(record)
    removed = {r.ref.ref for r in plan.remove}
    remaining = [e.ref for e in store.list_refs("") if e.ref not in removed] + ["HEAD"]
    needed = _needed_objects(store, remaining, workspace)
    for record in plan.keep:
        needed.update(o.md5 for o in record.outs.values())
    needed = {m for md5 in needed for m in cache.expand(md5)}  # a .dir needs the files it lists
    for md5, size in cache.written_objects().items():
        if md5 not in needed and cache.object_path(md5).is_file():
            plan.objects[md5] = cache.object_path(md5).stat().st_size
    return plan


def execute_gc(plan: GcPlan, store: GitStore, cache: DvcCache) -> int:
    """Remove the plan's refs (compare-and-swap), then its objects; return bytes freed."""
    for record in plan.remove:
        store.delete_ref(record.ref.ref, record.commit)
    return sum(cache.remove(md5) for md5 in plan.objects)


def collect(
    store: GitStore,
    cache: DvcCache,
    workspace: Path,
    scope: GcScope,
    *,
    dry_run: bool = False,
    **retention: object,
) -> tuple[GcPlan, int]:
    """Plan and (unless ``dry_run``) execute under the exclusive gc lock."""
    with gc_lock(store.git_dir, exclusive=True):
        plan = plan_gc(store, cache, workspace, scope, **retention)  # type: ignore[arg-type]
        return plan, 0 if dry_run else execute_gc(plan, store, cache)
