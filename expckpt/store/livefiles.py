"""Putting a checkpoint's dvclive history back into the workspace, from an untrusted tree.

A checkpoint commit may come from anyone's remote: every entry must be a regular file with a
plain relative name, nothing may resolve outside ``<workspace>/<live_dir>`` (no ``..``, no
absolute names, no symlink on the way), and a refusal happens before anything is written or
removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from expckpt.serialize.atomic import atomic_write_bytes
from expckpt.errors import UnsafeCheckpointError
from expckpt.store.gitstore import GitStore
from expckpt.text import is_printable, terminal_safe

__all__ = ["restore_live_files"]


def _checked_parts(rel: str, what: str, commit: str) -> list[str]:
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", "..") or not is_printable(part):
            raise _unsafe(commit, f"{what} {terminal_safe(repr(rel))} is not a plain relative path")
    return parts


def _unsafe(commit: str, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused to restore the dvclive files of checkpoint commit {commit[:7]}: {why};"
        " nothing was written. A pulled ref may be crafted: remove it (`dvc exp remove"
        " <exp>@<step>`), then resume from another checkpoint (`dvc exp apply`) or start over"
        " (`expckpt reset`)"
    )


def _no_symlink_below(start: Path, parts: list[str] | tuple[str, ...], commit: str) -> None:
    """Refuse when a directory on the way from ``start`` down ``parts`` is a symlink (writing
    there could land outside the workspace's dvclive directory)."""
    current = start
    for part in parts:
        current = current / part
        if current.is_symlink():
            target = terminal_safe(os.readlink(current))
            raise _unsafe(commit, f"{current} is a symlink (to {target}), so writing into it could leave the workspace")


def restore_live_files(store: GitStore, commit: str, workspace: Path, live_dir: str) -> None:
    """Make the dvclive directory exactly what ``commit`` holds (history up to its step).

    The commit's tree is untrusted (a pulled ref is anyone's): every entry must be a regular
    file with a plain relative name, and nothing may resolve outside ``<workspace>/<live_dir>``,
    also not through a symlink already in the workspace. Anything else refuses the whole
    restore with ``UnsafeCheckpointError`` before a single file is written or removed: resuming
    from a tampered checkpoint would make it the parent of every new one, so it stops the run
    (one line) rather than continuing with a warning.
    """
    entries = store.list_tree(commit, live_dir)
    if not entries:
        return
    live_parts = _checked_parts(live_dir.strip("/"), "the dvclive directory", commit)
    prefix = "/".join(live_parts) + "/"
    wanted: dict[tuple[str, ...], bytes] = {}
    for entry in entries:
        rel = entry.path[len(prefix) :] if entry.path.startswith(prefix) else entry.path
        parts = tuple(_checked_parts(rel, "entry", commit))
        if entry.mode & 0o170000 != 0o100000 or entry.data is None:
            kind = {0o120000: "a symlink", 0o160000: "a submodule", 0o040000: "a broken directory"}
            what = kind.get(entry.mode & 0o170000, f"mode {entry.mode:o}")
            raise _unsafe(commit, f"entry {terminal_safe(repr(entry.path))} is {what}, not a file")
        wanted[parts] = entry.data
    base = workspace / Path(*live_parts)
    _no_symlink_below(workspace, live_parts, commit)
    if base.exists() and not base.is_dir():
        raise _unsafe(commit, f"{base} is in the way: it is not a directory")
    for parts in wanted:
        _no_symlink_below(base, parts[:-1], commit)
    root_real = os.path.realpath(workspace)
    base_real = os.path.join(root_real, *live_parts)
    for parts in wanted:
        parent = os.path.realpath(base.joinpath(*parts).parent)
        if os.path.commonpath([parent, base_real]) != base_real:
            raise _unsafe(commit, f"{terminal_safe('/'.join(parts))} resolves outside {base}")
    if base.is_dir():
        for root, _, names in os.walk(base):  # does not follow symlinked directories
            for name in names:
                full = Path(root, name)
                if tuple(full.relative_to(base).parts) not in wanted:
                    full.unlink()  # a symlink itself is removed, never its target
    for parts, data in wanted.items():
        target = base.joinpath(*parts)
        if target.is_symlink() or not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data, durable=False)  # replaces a symlink, not its target
