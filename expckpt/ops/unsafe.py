"""Checkpoints that must not be applied: a directory output whose ``.dir`` manifest names a path
outside the directory (``../../x``, ``/abs``, a backslash, a NUL).

expckpt's own reads refuse such a manifest (``dirout.parse_manifest``), but DVC's ``dvc exp
apply`` checks a directory output out from the manifest as written (DVC 3.67 does not validate
pulled manifests): ``../../../ESCAPED.pt`` is written outside the workspace. expckpt cannot patch
DVC, so ``verify``, ``show`` and ``list`` mark such a checkpoint UNSAFE and say not to apply it;
``expckpt pull`` keeps it from becoming visible to DVC at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from expckpt.store.cache import DvcCache
from expckpt.serialize.dirout import UnsafeManifestError, is_dir_hash, parse_manifest
from expckpt.store.records import CheckpointRecord
from expckpt.text import terminal_safe

__all__ = ["ADVICE", "unsafe_checkpoints", "unsafe_output"]

ADVICE = "do not `dvc exp apply` it (DVC would write that path outside the workspace); remove it with `dvc exp remove`"


def unsafe_output(cache: DvcCache, path: str, md5: str) -> str | None:
    """Why the output ``path`` (object ``md5``) is unsafe to apply, or ``None``. An object not in
    the cache cannot be judged here (``verify`` says it is missing; ``dvc exp apply`` fails on it)."""
    if not is_dir_hash(md5):
        return None
    try:
        parse_manifest(cache.object_path(md5).read_bytes())
    except UnsafeManifestError as exc:
        return f"UNSAFE: the directory manifest of {path} names {terminal_safe(repr(exc.relpath))}, outside {path}/"
    except (OSError, ValueError):
        return None
    return None


def unsafe_checkpoints(records: Iterable[CheckpointRecord], cache: DvcCache) -> dict[str, str]:
    """commit -> why, for each checkpoint with an unsafe output (one read per directory object)."""
    seen: dict[tuple[str, str], str | None] = {}
    found: dict[str, str] = {}
    for record in records:
        for path, out in record.outs.items():
            key = (path, out.md5)
            if key not in seen:
                seen[key] = unsafe_output(cache, path, out.md5)
            if seen[key] and record.commit not in found:
                found[record.commit] = seen[key]  # type: ignore[assignment]
    return found
