"""``expckpt gc --cloud``: remove from the DVC remote the objects only removed checkpoints used.

Opt-in, after the local gc has removed the refs. A remote object goes only when all of this holds:

- expckpt itself wrote it into this repository's cache (its written log), so objects that other
  people or plain ``dvc push`` uploaded are never candidates;
- nothing here needs it: no remaining ref, branch, tag or HEAD (any commit reachable from them),
  no DVC metafile of those commits or of the workspace, no workspace note (``gc.still_needed``,
  the same rule as the local gc);
- no ref on the Git remote needs it: every ref ``git ls-remote`` lists there (branches, tags,
  other people's experiments and pushed checkpoints) counts as kept. When the Git remote has a
  commit this repository lacks, nothing is removed: its needs cannot be known here.

Remove a pushed checkpoint from the Git remote first (``dvc exp remove -g origin tut@3``) for its
objects to become collectable.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expckpt.store.cache import DvcCache
from expckpt.errors import ProjectError
from expckpt.ops.gc import still_needed
from expckpt.store.gitstore import GitStore
from expckpt.text import one_line

__all__ = ["CloudPlan", "execute_cloud_gc", "plan_cloud_gc"]


@dataclass
class CloudPlan:
    """Objects to delete from DVC remote ``remote`` (md5 -> bytes), and whose refs protected the rest."""

    remote: str
    git_remote: str | None
    objects: dict[str, int] = field(default_factory=dict)
    remote_tips: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(self.objects.values())


@contextlib.contextmanager
def _odb(dvc_root: Path, remote: str | None) -> Iterator[tuple[str, Any]]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.ERROR)
    try:
        with Repo(str(dvc_root)) as repo:
            name = remote or repo.config["core"].get("remote")
            odb = repo.cloud.get_remote_odb(name, "gc")
            yield str(name), odb
    except DvcException as exc:
        raise ProjectError(f"DVC remote: {' '.join(str(exc).split())}", path=dvc_root) from exc


def default_git_remote(store: GitStore, dvc_root: Path) -> str | None:
    """DVC's ``exp.git_remote``, else ``origin``, when this repository has it; else None."""
    from dvc.config import Config

    remotes = store.remotes()
    wanted = (Config(dvc_dir=str(Path(dvc_root) / ".dvc")).get("exp", {}) or {}).get("git_remote") or "origin"
    return wanted if wanted in remotes else None


def remote_tips(store: GitStore, git_remote: str) -> list[str]:
    """Commits that the Git remote's refs name; refuses when any is missing here."""
    try:
        by_ref = store.remote_refs(git_remote)
    except ProjectError as exc:
        raise ProjectError(
            f"could not list the refs of Git remote {git_remote!r} ({exc}); nothing was removed from the DVC remote",
            path=store.git_dir,
        ) from exc
    shas = {sha for ref, sha in by_ref.items() if f"{ref}^{{}}" not in by_ref}  # a peeled tag stands for its tag
    missing = store.missing_objects(shas)
    if missing:
        names = sorted(ref.rpartition("/")[2].removesuffix("^{}") for ref, sha in by_ref.items() if sha in missing)
        shown = one_line(", ".join(names[:5]), 200) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ProjectError(
            f"Git remote {git_remote!r} has commits this repository lacks ({shown}); their data may be on the DVC "
            f"remote, so nothing was removed: fetch them first (`git fetch {git_remote}` and "
            f"`git fetch {git_remote} 'refs/exps/*:refs/exps/*'`), then run again",
            path=store.git_dir,
        )
    return sorted(shas)


def plan_cloud_gc(
    store: GitStore,
    cache: DvcCache,
    workspace: Path,
    *,
    without: Iterable[str] = (),
    remote: str | None = None,
    git_remote: str | None = None,
) -> CloudPlan:
    """What ``--cloud`` would delete once the refs in ``without`` are gone (nothing is changed)."""
    dvc_root = store.git_dir.parent
    git_remote = git_remote or default_git_remote(store, dvc_root)
    tips = remote_tips(store, git_remote) if git_remote else []
    needed = still_needed(store, workspace, without=without, also=tips)
    written = cache.written_objects()
    candidates = sorted(m for m in written if m not in needed)
    with _odb(dvc_root, remote) as (name, odb):
        present = set(odb.oids_exist(candidates)) if candidates else set()
    return CloudPlan(
        remote=name,
        git_remote=git_remote,
        objects={m: written[m] for m in candidates if m in present},
        remote_tips=tips,
    )


def execute_cloud_gc(plan: CloudPlan, store: GitStore, workspace: Path) -> dict[str, int]:
    """Delete the plan's objects that are still unneeded now (asked again, after the refs went)."""
    tips = remote_tips(store, plan.git_remote) if plan.git_remote else []  # again: someone may have pushed
    needed = still_needed(store, workspace, also=tips)
    gone = {m: size for m, size in plan.objects.items() if m not in needed}
    if gone:
        with _odb(store.git_dir.parent, plan.remote) as (_, odb):
            odb.fs.rm([odb.oid_to_path(m) for m in sorted(gone)])
    return gone
