"""Sharing checkpoints: push one batch to a Git remote and the default DVC remote.

``push_batch`` is what the background pusher runs for the checkpoints waiting to go, in a child
process (``python -m expckpt.publish.remote``) so that DVC's network code never holds the training
process's interpreter lock and a hung upload can be killed. In order:

1. skip every checkpoint whose ref no longer names its commit (retention dropped it meanwhile);
2. upload the objects each commit's DVC metafiles name (``model.pt``, the data it was trained
   on; DVC's own used-objects collection, see ``inuse``) to the DVC remote, read from the
   workspace's ``.dvc/config`` (not from the commit, which may predate the remote);
3. only then push the refs (``GitStore.push``: ``git push <remote> <commit>:<ref>``), so a
   teammate who sees a ref can pull its data: the pointer moves last.

Nothing here takes DVC's repository lock or touches the workspace, so it runs while
``dvc exp run`` runs the stage. ``resolve_target`` turns ``checkpoint.push`` (or DVC's
``DVC_EXP_AUTO_PUSH`` convention) into remote names, checked once before training starts.

(``remote.one_line`` moved to ``expckpt.text.one_line``, the one text sanitiser.)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expckpt.store.cache import DvcCache
from expckpt.errors import ProjectError
from expckpt.store.gitstore import GitStore
from expckpt.store.refs import CheckpointRef
from expckpt.text import one_line

__all__ = ["PushFailed", "PushTarget", "push_batch", "resolve_target"]

_SHA = re.compile(r"[0-9a-f]{40}")
_TRUE = ("1", "y", "yes", "true", "on")
REJECTED_EXIT = 3
"""Exit status of the child when the Git remote refused a ref (retrying will not help)."""


class PushFailed(Exception):
    """One push attempt failed; ``permanent`` when retrying cannot help (a ref was rejected)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


@dataclass(frozen=True)
class PushTarget:
    """Where checkpoints go: a Git remote for refs, a DVC remote for objects."""

    git_remote: str
    dvc_remote: str
    source: str
    """What asked for pushing: ``checkpoint.push`` or ``DVC_EXP_AUTO_PUSH``."""


def _dvc_config(dvc_root: Path) -> Mapping[str, Any]:
    from dvc.config import Config

    return Config(dvc_dir=str(Path(dvc_root) / ".dvc"))


def resolve_target(
    store: GitStore, dvc_root: Path, configured: str | None, env: Mapping[str, str] | None = None
) -> tuple[PushTarget | None, str | None]:
    """The push target for this run and, when DVC's auto-push convention asked for one that
    cannot work, the warning to print (DVC itself warns and goes on in that case).

    ``checkpoint.push`` naming a missing Git remote, or a project without a default DVC remote,
    raises ``ProjectError`` before training starts: the fix is one command.
    """
    env = os.environ if env is None else env
    config = _dvc_config(dvc_root)
    exp = config.get("exp", {}) or {}
    source = "checkpoint.push"
    name = configured
    if name is None:
        auto = env.get("DVC_EXP_AUTO_PUSH")
        wanted = auto.strip().lower() in _TRUE if auto is not None else bool(exp.get("auto_push"))
        if not wanted:
            return None, None
        source = "DVC_EXP_AUTO_PUSH"
        name = env.get("DVC_EXP_GIT_REMOTE") or str(exp.get("git_remote") or "origin")
    try:
        return PushTarget(
            git_remote=_git_remote(store, name, source), dvc_remote=_dvc_remote(config), source=source
        ), None
    except ProjectError as exc:
        if source == "checkpoint.push":
            raise
        return None, f"expckpt: warning: not pushing checkpoints ({source} is set): {exc}"


def _git_remote(store: GitStore, name: str, source: str) -> str:
    remotes = store.remotes()
    if name not in remotes or name.startswith("-"):
        listed = ", ".join(remotes) or "none"
        raise ProjectError(
            f"{source} names Git remote {name!r}, which this repository does not have (it has: "
            f"{listed}); add it with `git remote add {name} <url>` or name another",
            path=store.git_dir,
        )
    return name


def _dvc_remote(config: Mapping[str, Any]) -> str:
    core = config.get("core", {}) or {}
    name = core.get("remote") if isinstance(core, Mapping) else None
    if not name or name not in (config.get("remote") or {}):
        raise ProjectError(
            "pushing checkpoints needs a default DVC remote for their files; add one with "
            "`dvc remote add -d <name> <url>` (e.g. s3://bucket/path) and commit .dvc/config"
        )
    return str(name)


# --------------------------------------------------------------------------- one batch


def _still_named(store: GitStore, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    kept = []
    for ref, commit in pairs:
        if CheckpointRef.parse(ref) is None or not _SHA.fullmatch(commit):
            raise PushFailed(f"not a checkpoint: {ref} {commit}", permanent=True)
        if store.get_ref(ref) == commit:
            kept.append((ref, commit))
    return kept


def objects_of(store: GitStore, dvc_root: Path, commits: Sequence[str]) -> set[str]:
    """The cache objects the DVC metafiles of these commits name (what ``dvc exp pull`` fetches)."""
    from expckpt.store.inuse import InUse

    return InUse(store, dvc_root).of_commits({c: store.commit_tree(c) for c in commits})


def upload_objects(cache: DvcCache, dvc_root: Path, dvc_remote: str, objects: set[str]) -> int:
    """Upload ``objects`` (md5 values, ``.dir`` manifests with their files) from the cache to
    ``dvc_remote``; return how many were sent. Objects missing from the cache are skipped
    (DVC says which); a failed transfer raises ``PushFailed``."""
    import logging

    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    logging.getLogger("dvc").setLevel(logging.ERROR)  # this is a child process: no progress noise
    with Repo(str(dvc_root)) as repo:
        present = {o for o in objects if cache.object_path(o).is_file()}
        result = repo.cloud.push([HashInfo("md5", o) for o in sorted(present)], remote=dvc_remote)
    if result.failed:
        raise PushFailed(f"{len(result.failed)} of {len(present)} files did not upload to DVC remote {dvc_remote!r}")
    return len(result.transferred)


def push_refs(store: GitStore, git_remote: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Push each ``(ref, commit)`` to ``git_remote`` (``GitStore.push``); a rejected ref is permanent."""
    outcome = store.push(git_remote, pairs)
    if outcome.rejected:
        names = ", ".join(r.rpartition("/")[2] for r in outcome.rejected)
        raise PushFailed(
            f"the remote already has a different {names} (not overwritten; "
            f"`dvc exp push -f {git_remote} <name>` replaces it)",
            permanent=True,
        )
    if outcome.error is not None:
        raise PushFailed(outcome.error)


def push_batch(store: GitStore, dvc_root: Path, target: PushTarget, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Push the checkpoints ``(ref, commit)`` that are still kept: objects first, then refs.
    Returns the refs pushed (the others were dropped by retention)."""
    kept = _still_named(store, pairs)
    if not kept:
        return []
    _refuse_foreign_chains(store, target.git_remote, kept)
    cache = DvcCache.for_project(dvc_root, store.git_dir)
    upload_objects(cache, dvc_root, target.dvc_remote, objects_of(store, dvc_root, [c for _, c in kept]))
    push_refs(store, target.git_remote, kept)
    return [ref for ref, _ in kept]


def _refuse_foreign_chains(store: GitStore, git_remote: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Never push into a chain another run holds on the remote (see ``expckpt.publish.remotename``)."""
    from expckpt.publish.remotename import RemoteUnreachable, foreign_checkpoints, remote_checkpoints

    for baseline, exp in sorted(
        {(r.baseline, r.exp) for r in map(CheckpointRef.parse, (ref for ref, _ in pairs)) if r}
    ):
        try:
            foreign = foreign_checkpoints(store, remote_checkpoints(store, git_remote, baseline), exp)
        except RemoteUnreachable as exc:
            raise PushFailed(str(exc)) from exc
        if foreign:
            ref, commit = foreign[0]
            raise PushFailed(
                f"Git remote {git_remote!r} has {ref.name} ({commit[:7]}) from another run of {exp!r};"
                " not pushing this run's checkpoints into that chain (they stay here)",
                permanent=True,
            )


def _one_line(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The child process: ``python -m expckpt.publish.remote ROOT GIT_REMOTE DVC_REMOTE REF=COMMIT...``.

    Prints ``pushed <ref>`` per ref pushed; on failure one line on stderr, exit 1 (worth a retry)
    or ``REJECTED_EXIT`` (not).
    """
    parser = argparse.ArgumentParser(prog="python -m expckpt.publish.remote")
    parser.add_argument("root", type=Path)
    parser.add_argument("git_remote")
    parser.add_argument("dvc_remote")
    parser.add_argument("checkpoints", nargs="+", metavar="REF=COMMIT")
    args = parser.parse_args(argv)
    pairs = [tuple(item.rsplit("=", 1)) for item in args.checkpoints]
    try:
        store = GitStore.open(args.root)
        target = PushTarget(git_remote=args.git_remote, dvc_remote=args.dvc_remote, source="expckpt")
        for ref in push_batch(store, args.root, target, pairs):
            print(f"pushed {ref}", flush=True)
    except PushFailed as exc:
        print(_one_line(exc), file=sys.stderr)
        return REJECTED_EXIT if exc.permanent else 1
    except Exception as exc:  # noqa: BLE001 - any failure is reported as one line and retried
        print(_one_line(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
