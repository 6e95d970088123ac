"""``expckpt gc`` and retention freeing: remove checkpoint refs, then the cache they alone used.

Order matters (Determined PR #7967 leaked storage by doing it the other way): refs go first,
then only cache objects that (a) expckpt itself wrote and (b) nothing still needs: no remaining
ref, branch, tag or HEAD (any commit reachable from them), no DVC metafile of those commits or of
the workspace (asked of DVC, see ``inuse``), no workspace note. Refs and objects expckpt did not
write are never touched.

The plan is made without the gc lock (so ``--dry-run`` never waits); executing it takes the
exclusive lock with a bounded wait, removes exactly the refs the plan listed by their listed
commits (compare-and-swap), then decides what is in use again, under the lock, before deleting
any object. ``free_dropped`` is the same last step for the refs training-time retention just
removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from expckpt.store.branchpoints import keep_branch_points
from expckpt.store.cache import DvcCache
from expckpt.store.catalog import Catalog, Chain
from expckpt.errors import ConfigError, ExpCkptError, RefConflictError
from expckpt.store.gclock import LockHolder, gc_lock
from expckpt.store.gitstore import GitStore
from expckpt.store.inuse import InUse
from expckpt.policy.policy import AnyOf, CheckpointInfo, keep_policy
from expckpt.store.records import BadRecordError, CheckpointRecord, parse_message
from expckpt.store.refs import CheckpointRef

__all__ = ["GcPlan", "GcResult", "GcScope", "collect", "execute_gc", "free_dropped", "plan_gc", "still_needed"]

FREE_DROPPED_WAIT_S = 2.0
"""How long training-time freeing waits for the lock before leaving the objects to ``expckpt gc``."""


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
    """What a gc run removes: checkpoint refs (at the commits listed), then cache objects (md5 -> bytes)."""

    remove: list[CheckpointRecord] = field(default_factory=list)
    keep: list[CheckpointRecord] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)
    branch_points: dict[str, list[str]] = field(default_factory=dict)
    """Checkpoints kept only as branch points: name -> the experiments that depend on them."""

    @property
    def bytes(self) -> int:
        return sum(self.objects.values())


@dataclass
class GcResult:
    """What executing a plan did."""

    removed: list[CheckpointRecord] = field(default_factory=list)
    """Refs this run deleted."""
    gone: list[CheckpointRecord] = field(default_factory=list)
    """Refs someone else deleted since the plan (e.g. ``dvc exp remove``): nothing to do."""
    moved: list[tuple[CheckpointRecord, str]] = field(default_factory=list)
    """Refs that point at another commit since the plan: kept, with the commit they point at now."""
    freed: dict[str, int] = field(default_factory=dict)
    """Cache objects really deleted (md5 -> bytes)."""

    @property
    def bytes(self) -> int:
        return sum(self.freed.values())


_IN_USE: dict[tuple[Path, Path], InUse] = {}
_PENDING: dict[Path, set[str]] = {}
"""Per repository, objects ``free_dropped`` could not free yet (the lock was busy)."""


def _in_use(store: GitStore, dvc_root: Path) -> InUse:
    """One memo per repository for the life of the process (answers depend on content only)."""
    key = (store.git_dir.resolve(), Path(dvc_root).resolve())
    found = _IN_USE.get(key)
    if found is None or found.store is not store:
        found = _IN_USE[key] = InUse(store, dvc_root)
    return found


def close_in_use() -> None:
    """Close the repositories the in-use answers keep open (end of a command)."""
    for in_use in _IN_USE.values():
        in_use.close()
    _IN_USE.clear()


def _kept_baselines(store: GitStore, scope: GcScope) -> set[str]:
    head = store.head()  # an unborn HEAD (``git checkout --orphan``) refuses, as show and list do
    keep: set[str] = {head} if scope.workspace and head else set()
    tips = store.branch_and_tag_tips()
    if scope.all_commits:
        return keep | set(store.commit_trees([*tips.values(), *([head] if head else [])]))
    for name, commit in tips.items():
        if (scope.all_branches and name.startswith("refs/heads/")) or (
            scope.all_tags and name.startswith("refs/tags/")
        ):
            keep.add(commit)
    return keep


def needed_objects(
    store: GitStore,
    in_use: InUse,
    workspaces: Iterable[Path],
    *,
    without: Iterable[str] = (),
    also: Iterable[str] = (),
) -> set[str]:
    """Every object something still needs, if the refs in ``without`` were gone; ``also`` are
    more commits to keep (a Git remote's ref tips, for ``gc --cloud``)."""
    dropped = set(without)
    entries = [e for e in store.list_refs("") if e.ref not in dropped]
    head = store.get_ref("HEAD")
    needed: set[str] = set()
    for entry in entries:  # checkpoint records name their outputs in the message as well
        ref = CheckpointRef.parse(entry.ref)
        try:
            record = parse_message(ref, entry.commit, entry.message) if ref else None
        except BadRecordError:  # said once by the catalog; its commit's metafiles still count below
            record = None
        if record is not None:
            needed.update(o.md5 for o in record.outs.values())
    commits = store.commit_trees([e.commit for e in entries] + ([head] if head else []) + list(also))
    needed |= in_use.of_commits(commits)
    for workspace in dict.fromkeys(Path(w).resolve() for w in workspaces):
        needed |= in_use.of_workspace(workspace)
    in_use.save()
    return needed


def still_needed(
    store: GitStore, workspace: Path, *, without: Iterable[str] = (), also: Iterable[str] = ()
) -> set[str]:
    """``needed_objects`` for this repository and ``workspace`` (what ``plan_gc`` asks)."""
    return needed_objects(
        store, _in_use(store, store.git_dir.parent), _workspaces(store, workspace), without=without, also=also
    )


def _workspaces(store: GitStore, workspace: Path) -> list[Path]:
    """The workspace, and the repository's own when ``workspace`` is a ``--temp`` copy."""
    return [Path(workspace), store.git_dir.parent]


def plan_gc(
    store: GitStore,
    cache: DvcCache,
    workspace: Path,
    scope: GcScope,
    *,
    keep_last: int | None = None,
    keep_best: int = 0,
    metric: str | None = None,
    mode: str = "max",
    policy_for: Callable[[Chain], AnyOf] | None = None,
    include_branch_points: bool = False,
) -> GcPlan:
    """What gc would remove, decided without any lock (nothing is changed). ``policy_for``
    gives each experiment's own rules (``recorded.gc_policy``) instead of the keyword settings;
    branch points (``expckpt.store.branchpoints``) are kept unless ``include_branch_points``."""
    if policy_for is None:
        if keep_best and not metric:
            raise ConfigError("--keep-best needs --metric (the metric to rank by, e.g. acc)", key="metric")
        policy = keep_policy(keep_last=keep_last, keep_best=keep_best or 0, monitor=metric, mode=mode)
    baselines = _kept_baselines(store, scope)
    plan = GcPlan()
    for chain in Catalog.load(store).chains():
        if chain.baseline not in baselines:
            plan.remove.extend(chain.records)
            continue
        if policy_for is not None:
            policy = policy_for(chain)
        for record, keep in zip(chain.records, policy.should_keep([CheckpointInfo.of(r) for r in chain.records])):
            (plan.keep if keep else plan.remove).append(record)
    if not include_branch_points:
        plan.remove, plan.keep, plan.branch_points = keep_branch_points(plan.remove, plan.keep)
    needed = needed_objects(
        store,
        _in_use(store, store.git_dir.parent),
        _workspaces(store, workspace),
        without={r.ref.ref for r in plan.remove},
    )
    needed = {m for md5 in needed for m in cache.expand(md5)}  # a .dir needs the files it lists
    for md5 in cache.written_objects():
        if md5 not in needed and cache.object_path(md5).is_file():
            plan.objects[md5] = cache.object_path(md5).stat().st_size
    return plan


def _delete(store: GitStore, record: CheckpointRecord) -> str | None:
    """Delete the ref if it still points at the listed commit (None); else where it points now
    (``""`` = already gone)."""
    try:
        store.delete_ref(record.ref.ref, record.commit)
    except RefConflictError as exc:
        return exc.actual or ""
    return None


def execute_gc(plan: GcPlan, store: GitStore, cache: DvcCache, workspace: Path) -> GcResult:
    """Carry out ``plan``: call it holding the exclusive gc lock (``collect`` does)."""
    result = GcResult()
    for record in plan.remove:
        now = _delete(store, record)
        if now is None:
            result.removed.append(record)
        elif now == "":
            result.gone.append(record)
        else:
            result.moved.append((record, now))
    still_named = {m for r, _ in result.moved for o in r.outs.values() for m in cache.expand(o.md5)}
    needed = needed_objects(store, _in_use(store, store.git_dir.parent), _workspaces(store, workspace))
    needed = {m for md5 in needed for m in cache.expand(md5)}
    for md5 in plan.objects:
        if md5 not in needed and md5 not in still_named:
            freed = cache.remove(md5)
            if freed:
                result.freed[md5] = freed
    return result


def collect(
    plan: GcPlan,
    store: GitStore,
    cache: DvcCache,
    workspace: Path,
    *,
    timeout: float | None,
    on_wait: Callable[[list[LockHolder]], None] | None = None,
) -> GcResult:
    """Execute ``plan`` under the exclusive gc lock, waiting at most ``timeout`` seconds for it."""
    with gc_lock(store.git_dir, exclusive=True, timeout=timeout, on_wait=on_wait):
        return execute_gc(plan, store, cache, workspace)


def free_dropped(
    store: GitStore,
    cache: DvcCache,
    workspace: Path,
    dropped: Sequence[CheckpointRecord],
    *,
    timeout: float = FREE_DROPPED_WAIT_S,
) -> int:
    """Free the cache objects of checkpoints whose refs retention just deleted; return the bytes.

    Only objects expckpt wrote and nothing else needs go (the same rule as ``expckpt gc``),
    under the exclusive gc lock. Call it after ``delete_ref`` and outside a publish (which holds
    the lock shared). It never fails training: when the lock is busy longer than ``timeout``
    (another writer mid-checkpoint, a gc), the objects wait for the next call (or ``expckpt gc``).
    DVC's answers are memoised per process and on disk, so a call costs about one new commit's
    worth of work (~10 ms on 100 checkpoints).
    """
    written = cache.written_objects()
    pending = _PENDING.setdefault(store.git_dir.resolve(), set())
    dropped_objects = {m for r in dropped for o in r.outs.values() for m in cache.expand(o.md5)}  # .dir: its files too
    candidates = pending | {m for m in dropped_objects if m in written}
    candidates = {m for m in candidates if cache.object_path(m).is_file()}
    if not candidates:
        return 0
    try:
        with gc_lock(store.git_dir, exclusive=True, timeout=timeout):
            needed = needed_objects(store, _in_use(store, store.git_dir.parent), _workspaces(store, workspace))
            needed = {m for md5 in needed for m in cache.expand(md5)}
            freed = sum(cache.remove(md5) for md5 in sorted(candidates - needed))
            pending.clear()
            return freed
    except ExpCkptError:
        pending.update(candidates)  # tried again with the next dropped checkpoint
        return 0
