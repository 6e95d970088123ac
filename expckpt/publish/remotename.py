"""One experiment name, one remote: never let a run's pushed chain mix with another run's.

Two teammates who clone one baseline and both run ``-n tut`` with pushing configured would
otherwise interleave on the shared Git remote: B's ``tut@0``, ``tut@1`` beside A's ``tut@2``, and
whoever pulls ``tut@2`` gets A's model under B's chain. So, with a push target:

- before training, ``check_remote_name`` lists the remote's checkpoints of this baseline (``git
  ls-remote``, untrusted: every line is parsed and validated) and refuses, in one line naming
  a free name, when the remote holds an ``<exp>@<step>`` that is not in this repository's own
  chain of that name (its refs and the checkpoints they continue from);
- before each pushed batch, ``foreign_checkpoints`` is asked again, so a chain another run
  started on the remote meanwhile stops this run's pushing instead of being mixed into.

An unreachable remote does not stop training: the check is skipped with one warning, and the
pusher checks again before it pushes anything.
"""

from __future__ import annotations

import re

from expckpt.errors import ProjectError, RefConflictError
from expckpt.store.gitstore import GitStore
from expckpt.store.records import BadRecordError, parse_message
from expckpt.store.refs import EXPS_PREFIX, CheckpointRef

__all__ = ["RemoteUnreachable", "check_remote_name", "foreign_checkpoints", "remote_checkpoints"]

_SHA = re.compile(r"[0-9a-f]{40}")
LS_REMOTE_TIMEOUT_S = 60.0


class RemoteUnreachable(Exception):
    """``git ls-remote`` failed (network, credentials): one line of why."""


def remote_checkpoints(store: GitStore, git_remote: str, baseline: str) -> dict[CheckpointRef, str]:
    """The checkpoint refs of ``baseline`` on ``git_remote`` -> commit (invalid lines are skipped)."""
    prefix = f"{EXPS_PREFIX}{baseline[:2]}/{baseline[2:]}/"
    try:
        listed = store.ls_remote(git_remote, f"{prefix}*", timeout=LS_REMOTE_TIMEOUT_S)
    except ProjectError as exc:
        raise RemoteUnreachable(str(exc)) from exc
    found: dict[CheckpointRef, str] = {}
    for name, commit in listed.items():
        ref = CheckpointRef.parse(name)
        if ref is not None and name.startswith(prefix) and _SHA.fullmatch(commit):
            found[ref] = commit
    return found


def own_chain(store: GitStore, baseline: str, exp: str) -> set[str]:
    """Commits of this repository's checkpoints of ``exp``: its refs, and every checkpoint they
    continue from (retention may have dropped those refs; their commits still name the parent)."""
    prefix = f"{EXPS_PREFIX}{baseline[:2]}/{baseline[2:]}/"
    todo = [c for r, c in store.ref_targets(prefix).items() if (p := CheckpointRef.parse(r)) and p.exp == exp]
    own: set[str] = set()
    while todo:
        commit = todo.pop()
        if commit in own:
            continue
        own.add(commit)
        message = store.commit_message(commit)
        try:
            record = parse_message(CheckpointRef(baseline=baseline, exp=exp, step=0), commit, message or "")
        except BadRecordError:
            record = None
        if record is not None and record.parent:
            todo.append(record.parent)
    return own


def foreign_checkpoints(store: GitStore, remote: dict[CheckpointRef, str], exp: str) -> list[tuple[CheckpointRef, str]]:
    """The remote's ``<exp>@<step>`` refs that are not in this repository's own chain, by step."""
    mine: dict[str, set[str]] = {}
    foreign = []
    for ref, commit in remote.items():
        if ref.exp != exp:
            continue
        if ref.baseline not in mine:
            mine[ref.baseline] = own_chain(store, ref.baseline, exp)
        if commit not in mine[ref.baseline]:
            foreign.append((ref, commit))
    return sorted(foreign, key=lambda item: item[0].step)


def check_remote_name(store: GitStore, git_remote: str, baseline: str, exp: str) -> str | None:
    """Refuse (``RefConflictError``, one line with a free name) a run whose name another run's
    checkpoints hold on ``git_remote``; return a warning line when the remote cannot be asked."""
    try:
        remote = remote_checkpoints(store, git_remote, baseline)
    except RemoteUnreachable as exc:
        return (
            f"expckpt: warning: could not list Git remote {git_remote!r} to check the name {exp!r} ({exc});"
            " checking again before each push"
        )
    foreign = foreign_checkpoints(store, remote, exp)
    if not foreign:
        return None
    ref, commit = foreign[0]
    local_prefix = f"{EXPS_PREFIX}{baseline[:2]}/{baseline[2:]}/"
    used = {r.exp for r in remote} | {p.exp for p in map(CheckpointRef.parse, store.ref_targets(local_prefix)) if p}
    n = 2
    while f"{exp}-{n}" in used:
        n += 1
    raise RefConflictError(
        f"Git remote {git_remote!r} already has checkpoint {ref.name!r} ({commit[:7]}) from another run of"
        f" {exp!r}; pushing this run under the same name would mix two runs in one chain: run with"
        f" another name, e.g. dvc exp run -n {exp}-{n}",
        ref=ref.ref,
        actual=commit,
    )
