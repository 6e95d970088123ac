"""What every ``expckpt`` command works on: the project, its Git store and DVC cache, the catalog,
and the shared views of it (chains, the checkpoint tree, sizes, orphaned runs)."""

from __future__ import annotations

import sys

import yaml

from expckpt.store.cache import DvcCache
from expckpt.store.catalog import Catalog, Chain
from expckpt.policy.config import CheckpointConfig
from expckpt.store.gitstore import GitStore
from expckpt.ops.lineage import Tree, build_tree
from expckpt.store.project import Project
from expckpt.ops.unsafe import unsafe_checkpoints


__all__ = ["Context"]


class Context:
    """The project the command runs in, opened lazily."""

    def __init__(self) -> None:
        self.project = Project.discover(env={})
        self.store = GitStore.open(self.project.root)
        self.cache = DvcCache.for_project(self.project.root, self.store.git_dir)

    def head(self) -> str:
        return self.store.head()

    def labels(self) -> dict[str, str]:
        """commit -> the first branch (else tag) name pointing at it."""
        labels: dict[str, str] = {}
        for ref, commit in self.store.branch_and_tag_tips().items():
            labels.setdefault(commit, ref.removeprefix("refs/heads/").removeprefix("refs/tags/"))
        return labels

    def config(self) -> CheckpointConfig:
        path = self.project.workspace / "params.yaml"
        try:
            params = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            params = {}
        return CheckpointConfig.from_params(params.get("checkpoint"))

    def catalog(self, all_baselines: bool) -> Catalog:
        return Catalog.load(self.store, None if all_baselines else [self.head()])


def _chains(ctx: Context, exp: str | None, all_baselines: bool) -> list[Chain]:
    catalog = ctx.catalog(all_baselines or exp is not None)
    chains = catalog.chains()
    if exp:
        chains = [c for c in chains if c.exp == exp]
        if not chains:
            raise catalog.unknown(exp)
    return chains


def _tree(
    ctx: Context, catalog: Catalog, git_remote: str | None, monitor: str | None = None, mode: str | None = None
) -> Tree:
    cfg = ctx.config()
    pushed = set()
    if git_remote:  # one `git ls-remote`: the checkpoints whose commit the remote's refs/exps name
        pushed = {sha for ref, sha in ctx.store.remote_refs(git_remote).items() if ref.startswith("refs/exps/")}
    return build_tree(
        catalog,
        ctx.labels(),
        cfg.keep_policy(),
        monitor=monitor or cfg.monitor,
        mode=mode or cfg.mode,
        pushed=pushed,
        head=ctx.head(),
        unsafe=unsafe_checkpoints(catalog.records, ctx.cache),
    )


def _say_orphans(ctx: Context) -> None:
    from expckpt.train.orphan import orphan_lines

    for line in orphan_lines(ctx.project.workspace):
        print(line, file=sys.stderr)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)
