"""``expckpt pull <git-remote> <exp>``: checkpoints from a remote you do not control.

``dvc exp pull`` makes a remote's refs visible to DVC at once, and DVC trusts what they name: a
checkpoint whose ``.dir`` manifest lists ``../../../x`` is written outside the workspace by ``dvc
exp apply``. ``pull`` fetches the remote's ``<exp>@<step>`` refs into a namespace DVC does not
read (``refs/expckpt-quarantine/``), validates each checkpoint there (its metadata, its dvc.lock
against the metadata, and every directory manifest, read from the DVC remote), and only then
creates its ``refs/exps/...`` ref. A checkpoint that fails is refused with one line and never
becomes visible; an existing local checkpoint of the same name is never replaced. The quarantine
refs are removed at the end.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from expckpt.store.cache import DvcCache
from expckpt.serialize.dirout import UnsafeManifestError, is_dir_hash, parse_manifest
from expckpt.errors import ProjectError, RefConflictError
from expckpt.store.gitstore import GitStore
from expckpt.store.records import BadRecordError, CheckpointRecord, parse_message
from expckpt.store.refs import EXPS_PREFIX, CheckpointRef
from expckpt.publish.remotename import RemoteUnreachable
from expckpt.ops.verify import locked_outputs

__all__ = ["QUARANTINE", "PullResult", "pull_checkpoints"]

QUARANTINE = "refs/expckpt-quarantine/"


@dataclass
class PullResult:
    accepted: list[CheckpointRecord] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(checkpoint name, why) of each checkpoint left out."""


def _listed(store: GitStore, git_remote: str, exp: str) -> list[CheckpointRef]:
    try:
        listed = store.ls_remote(git_remote, f"{EXPS_PREFIX}*")
    except ProjectError as exc:
        raise RemoteUnreachable(str(exc)) from exc
    found = []
    for name in listed:
        ref = CheckpointRef.parse(name)
        if ref is not None and exp in (ref.exp, ref.name):
            found.append(ref)
    return sorted(found, key=lambda r: (r.baseline, r.step))


def _manifest_bytes(dvc_root: Path, cache: DvcCache, md5: str) -> bytes:
    """The ``.dir`` object from the cache, else read from the default DVC remote (not cached)."""
    if cache.object_path(md5).is_file():
        return cache.object_path(md5).read_bytes()
    from dvc.repo import Repo

    with Repo(str(dvc_root)) as repo, tempfile.TemporaryDirectory() as tmp:
        odb = repo.cloud.get_remote_odb(command="pull")
        odb.fs.get_file(odb.oid_to_path(md5), os.path.join(tmp, "m"))
        return Path(tmp, "m").read_bytes()


def _why_not(store: GitStore, cache: DvcCache, dvc_root: Path, ref: CheckpointRef, commit: str) -> str | None:
    message = store.commit_message(commit)
    if message is None:
        return "its commit did not arrive"
    try:
        record = parse_message(ref, commit, message)
    except BadRecordError as exc:
        return f"its metadata is invalid ({exc})"
    if record is None:
        return "it is not an expckpt checkpoint (no metadata)"
    locked = locked_outputs(store.read_file(commit, "dvc.lock"))
    for path, out in record.outs.items():
        if locked.get(path) != out.md5:
            return f"its dvc.lock does not record {path} as {out.md5}"
        if not is_dir_hash(out.md5):
            continue
        try:
            parse_manifest(_manifest_bytes(dvc_root, cache, out.md5))
        except UnsafeManifestError as exc:
            return f"UNSAFE: the directory manifest of {path} names {exc.relpath!r}, outside {path}/"
        except Exception as exc:  # noqa: BLE001 - unreadable or missing: it cannot be checked
            return f"the directory manifest of {path} ({out.md5}) could not be read and checked ({type(exc).__name__}: {exc})"
    return None


def pull_checkpoints(store: GitStore, cache: DvcCache, dvc_root: Path, git_remote: str, exp: str) -> PullResult:
    """Fetch ``exp``'s checkpoints (or the one named ``exp@step``) into quarantine, validate, publish."""
    if git_remote not in store.remotes():
        raise ProjectError(
            f"no Git remote named {git_remote!r} (this repository has: {', '.join(store.remotes()) or 'none'})",
            path=store.git_dir,
        )
    try:
        wanted = _listed(store, git_remote, exp)
    except RemoteUnreachable as exc:
        raise ProjectError(f"could not list Git remote {git_remote!r}: {exc}", path=store.git_dir) from exc
    if not wanted:
        raise ProjectError(f"Git remote {git_remote!r} has no checkpoints of {exp!r}", path=store.git_dir)
    quarantined = {r: QUARANTINE + r.ref.removeprefix("refs/") for r in wanted}
    result = PullResult()
    try:
        failed = store.fetch(git_remote, [f"+{r.ref}:{q}" for r, q in quarantined.items()])
        if failed is not None:
            raise ProjectError(f"git fetch {git_remote} failed: {failed}", path=store.git_dir)
        for ref, q in quarantined.items():
            commit = store.get_ref(q)
            why = "it did not arrive" if commit is None else _why_not(store, cache, dvc_root, ref, commit)
            if why is None:
                local = store.get_ref(ref.ref)
                if local is not None and local != commit:
                    why = f"a different local checkpoint {ref.name} ({local[:7]}) exists; it is kept"
                elif local is None:
                    try:
                        store.create_ref(ref.ref, commit)  # type: ignore[arg-type]
                    except RefConflictError as exc:
                        why = str(exc)
            if why is None:
                record = parse_message(ref, commit, store.commit_message(commit) or "")  # type: ignore[arg-type]
                result.accepted.append(record)  # type: ignore[arg-type]
            else:
                result.refused.append((ref.name, why))
    finally:
        for q in quarantined.values():
            current = store.get_ref(q)
            if current is not None:
                store.delete_ref(q, current)
    return result
