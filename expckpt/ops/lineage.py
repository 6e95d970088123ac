"""The checkpoint tree: which run continued or started from which checkpoint, with marks.

    tree = build_tree(catalog, labels, policy, monitor="acc", mode="max")
    for group in tree.groups:            # one per baseline, HEAD's first
        for run in group.runs:           # roots, the most recently written first
            run.points, run.children     # checkpoints oldest first; runs that forked from them

A run (one experiment's chain) hangs under the checkpoint it came from: ``resumed`` when it
continued that checkpoint (``dvc exp apply <exp>@N && dvc exp run``), ``initialized`` when a new
trial took its weights (``initialized_from``). A run whose source is not in the catalog (another
baseline not loaded, or removed) is a root that still names the commit it came from.

Each checkpoint carries the reasons the keep policy keeps it (``kept_by``) and its marks:
``newest`` (where ``dvc exp run`` resumes), ``best`` (best ``monitor`` value of its run),
``paused``, and ``pushed`` when the caller knows it is on the remote. Both views (``expckpt show``
and ``expckpt report --html``) read this one structure; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from expckpt.store.branchpoints import branch_points
from expckpt.store.catalog import Catalog, Chain
from expckpt.errors import UnknownCheckpointError
from expckpt.policy.policy import CheckpointInfo, KeepPolicy
from expckpt.policy.ranking import better, finite
from expckpt.store.records import CheckpointRecord

__all__ = ["Group", "Point", "Run", "Tree", "build_tree", "lineage_of"]


@dataclass(frozen=True)
class Point:
    """One checkpoint in the tree."""

    record: CheckpointRecord
    kept_by: tuple[str, ...]
    """Reasons the keep policy keeps it (empty: outside the policy, ``expckpt gc`` would remove it)."""
    marks: tuple[str, ...]
    """Some of ``newest``, ``best``, ``paused``, ``pushed``, ``branch point of <exps>``."""
    unsafe: str | None = None
    """Why applying it is unsafe (``expckpt.ops.unsafe``: a pulled manifest naming a path outside), or None."""


@dataclass
class Run:
    """One experiment's chain placed in the tree."""

    chain: Chain
    points: tuple[Point, ...]
    """Its checkpoints, oldest step first."""
    link: str | None = None
    """``"resumed"`` or ``"initialized"`` when it came from another checkpoint, else None."""
    source_commit: str | None = None
    """Commit of the checkpoint it came from (also when that checkpoint is not in the catalog)."""
    source: CheckpointRecord | None = None
    """That checkpoint, when the catalog has it."""
    children: list[Run] = field(default_factory=list)
    """Runs that came from one of its checkpoints, the most recently written first."""

    @property
    def exp(self) -> str:
        return self.chain.exp

    @property
    def newest_time(self) -> float:
        """When anything in this run or below it was last written."""
        return max([self.chain.newest.time, *(c.newest_time for c in self.children)])

    def walk(self) -> list[Run]:
        """This run and every run below it, depth first."""
        return [self, *(r for child in self.children for r in child.walk())]


@dataclass(frozen=True)
class Group:
    """The runs of one baseline commit."""

    baseline: str
    label: str | None
    """Branch or tag name pointing at the baseline, if any."""
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class Tree:
    groups: tuple[Group, ...]
    monitor: str | None = None
    mode: str = "max"

    def runs(self) -> list[Run]:
        return [r for g in self.groups for root in g.runs for r in root.walk()]

    def points(self) -> list[Point]:
        return [p for r in self.runs() for p in r.points]


def _best(records: tuple[CheckpointRecord, ...], monitor: str | None, mode: str) -> CheckpointRecord | None:
    best, best_value = None, None
    for record in records:
        value = record.metrics.get(monitor) if monitor else None
        if better(value, best_value, mode):
            best, best_value = record, finite(value)
    return best


def _points(
    chain: Chain,
    policy: KeepPolicy | None,
    monitor: str | None,
    mode: str,
    pushed: Collection[str],
    points_of: Mapping[str, list[str]],
    unsafe: Mapping[str, str],
) -> tuple[Point, ...]:
    reasons = (
        policy.reasons([CheckpointInfo.of(r) for r in chain.records]) if policy else [frozenset()] * len(chain.records)
    )
    best = _best(chain.records, monitor, mode)
    points = []
    for record, why in zip(chain.records, reasons, strict=True):
        marks = [
            name
            for name, on in (
                ("newest", record is chain.newest),
                ("best", record is best),
                ("paused", record.paused),
                ("pushed", record.commit in pushed),
            )
            if on
        ]
        if record.commit in points_of:  # another run continued or started from it: gc keeps it
            marks.append(f"branch point of {' '.join(points_of[record.commit])}")
        points.append(Point(record, tuple(sorted(why)), tuple(marks), unsafe.get(record.commit)))
    return tuple(points)


def _source(chain: Chain) -> tuple[str | None, str | None]:
    if chain.origin is not None:
        return "resumed", chain.origin
    init = chain.records[0].initialized_from
    if init is not None:
        return "initialized", init.commit
    return None, None


def build_tree(
    catalog: Catalog,
    labels: Mapping[str, str],
    policy: KeepPolicy | None = None,
    *,
    monitor: str | None = None,
    mode: str = "max",
    pushed: Collection[str] = frozenset(),
    head: str | None = None,
    unsafe: Mapping[str, str] | None = None,
) -> Tree:
    """The runs of ``catalog`` as a tree; see the module docstring."""
    runs: dict[tuple[str, str], Run] = {}
    points_of = branch_points(catalog.records)
    for chain in catalog.chains():
        link, source_commit = _source(chain)
        runs[(chain.baseline, chain.exp)] = Run(
            chain,
            _points(chain, policy, monitor, mode, pushed, points_of, unsafe or {}),
            link,
            source_commit,
            catalog.by_commit(source_commit) if source_commit else None,
        )
    roots: list[Run] = []
    for run in runs.values():
        parent = None
        if run.source is not None:
            parent = runs.get((run.source.ref.baseline, run.source.exp))
        if parent is None or parent is run or _below(parent, run, runs):
            roots.append(run)
        else:
            parent.children.append(run)
    for run in runs.values():
        run.children.sort(key=lambda r: r.newest_time, reverse=True)
    baselines: dict[str, list[Run]] = {}
    for root in sorted(roots, key=lambda r: r.newest_time, reverse=True):
        baselines.setdefault(root.chain.baseline, []).append(root)
    order = sorted(baselines, key=lambda b: (b != head, b not in labels))  # stable: newest first otherwise
    groups = tuple(Group(b, labels.get(b), tuple(baselines[b])) for b in order)
    return Tree(groups, monitor, mode)


def _below(parent: Run, run: Run, runs: Mapping[tuple[str, str], Run]) -> bool:
    """True when ``parent`` itself descends from ``run`` (hand-made refs could form a cycle)."""
    seen = set()
    current: Run | None = parent
    while current is not None and current.source is not None:
        key = (current.source.ref.baseline, current.source.exp)
        if key in seen:
            return True
        seen.add(key)
        current = runs.get(key)
        if current is run:
            return True
    return False


def lineage_of(catalog: Catalog, exp: str) -> Catalog:
    """Only experiment ``exp`` and the runs it came from (so its fork points still show); an unknown
    name is an ``UnknownCheckpointError`` naming the experiments there are."""
    by_run: dict[tuple[str, str], list[CheckpointRecord]] = {}
    for record in catalog.records:
        by_run.setdefault((record.ref.baseline, record.exp), []).append(record)
    todo = [key for key in by_run if key[1] == exp]
    if not todo:
        names = sorted({e for _, e in by_run})
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise UnknownCheckpointError(
            f"no experiment named {exp!r}; experiments with checkpoints: {shown or '(none yet)'}", ref=exp
        )
    wanted: set[tuple[str, str]] = set()
    while todo:
        key = todo.pop()
        if key in wanted:
            continue
        wanted.add(key)
        _, source = _source(Chain(key[0], key[1], tuple(by_run[key])))
        came_from = catalog.by_commit(source) if source else None
        if came_from is not None:
            todo.append((came_from.ref.baseline, came_from.exp))
    return Catalog(r for key in wanted for r in by_run[key])
