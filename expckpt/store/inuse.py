"""Which cache objects are still in use: asked of DVC itself, metafile by metafile.

An object is in use when a DVC metafile names it (``dvc.yaml`` + ``dvc.lock`` in any directory,
any ``.dvc`` file, tracked or not) in a kept commit or in a workspace, or when a workspace's
expckpt note names it. The answer per metafile is DVC's own used-objects collection
(``Stage.get_used_objs``: the same code ``dvc gc`` uses, including directory outputs expanded
through their ``.dir`` manifest), so expckpt never second-guesses DVC's file formats.

Asking DVC per commit through its brancher costs ~10 ms a revision (a checkpoint is a commit),
so the work is deduplicated on content: a metafile's answer depends only on its blob (for
``dvc.yaml``, on the pair with its ``dvc.lock``, and on the params files when the ``dvc.yaml`` is
templated). Checkpoints of a run differ only in ``dvc.lock``; their ``dvc.yaml`` is parsed once
and each distinct lock is filled in with DVC's own lock loader. Answers are kept for the life of
the ``InUse`` object, so the training loop pays only for its newest commit, and on disk
(``.git/expckpt/in-use.json``, per DVC version), so a repeated gc need not even import DVC.

A metafile DVC cannot read is not skipped: every 32-hex token in it counts as in use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from expckpt.serialize.atomic import atomic_write_bytes
from expckpt.store.gitstore import GitStore
from expckpt.store.session import SessionNote

__all__ = ["InUse"]

_LOCK = "dvc.lock"
_PIPELINE = "dvc.yaml"
_CONTEXT = frozenset({".dvcignore", "params.yaml", "params.yml", "params.json", "params.toml", "params.py"})
_SKIP_DIRS = frozenset({".git", ".dvc"})
_WORKSPACE_PATTERNS = (
    ":(glob)**/dvc.yaml",
    ":(glob)**/dvc.lock",
    ":(glob)**/*.dvc",
    ":(glob)**/.dvcignore",
    ":(glob)**/params.*",
)
_OBJECT_ID = re.compile(r"[0-9a-f]{32}(\.dir)?")
_HEX32 = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


@functools.cache
def _dvc_version() -> str:
    from importlib.metadata import version

    return version("dvc")


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _metafile_or_context(name: str) -> bool:
    return name in (_LOCK, _PIPELINE) or name in _CONTEXT or (name.endswith(".dvc") and name != ".dvc")


def _dirname(path: str) -> str:
    return path.rpartition("/")[0]


def _named(data: bytes | None) -> set[str]:
    """The fallback for a metafile DVC cannot read: every md5-looking token in it."""
    return {m.decode() for m in _HEX32.findall(data or b"")}


@contextlib.contextmanager
def _quiet_dvc() -> Iterator[None]:
    """DVC warns per revision (e.g. an output never committed); gc output stays ours."""
    log = logging.getLogger("dvc")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _values(used: Mapping[Any, Iterable[Any]]) -> set[str]:
    return {h.value for objs in used.values() for h in objs if getattr(h, "value", None)}


class InUse:
    """Objects that DVC metafiles name, memoised by metafile content; one per gc run or training run."""

    def __init__(self, store: GitStore, dvc_root: Path) -> None:
        self.store = store
        self.dvc_root = Path(dvc_root)
        self._repos: dict[Path, Any] = {}
        self._units: dict[tuple[Any, ...], frozenset[str]] = {}
        self._commits: dict[str, frozenset[str]] = {}
        self._ws_dvcfiles: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._disk = Path(store.git_dir) / "expckpt" / "in-use.json"
        self._loaded = False
        self._touched: set[tuple[Any, ...]] = set()
        self._dirty = False

    # -- the answers kept on disk -------------------------------------------------------------
    def _load(self) -> None:
        """Answers of earlier runs (same DVC version): they depend on blob content only."""
        if self._loaded:
            return
        self._loaded = True
        try:
            data = json.loads(self._disk.read_text())
            if data.get("v") != 1 or data.get("dvc") != _dvc_version():
                return
            for key, values in data["units"]:
                if all(isinstance(v, str) and _OBJECT_ID.fullmatch(v) for v in values):
                    self._units.setdefault(_as_tuple(key), frozenset(values))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return

    def save(self) -> None:
        """Keep the answers this process used, for the next run (a cache: losing it costs time only).

        Answers that involve a directory output are not kept: they depend on whether its ``.dir``
        manifest was in the cache, not only on the metafile.
        """
        if not self._dirty:
            return
        units = [
            [list(k), sorted(self._units[k])]
            for k in self._touched
            if k in self._units and not any(v.endswith(".dir") for v in self._units[k])
        ]
        payload = {"v": 1, "dvc": _dvc_version(), "units": units}
        with contextlib.suppress(OSError):
            self._disk.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._disk, json.dumps(payload, default=list).encode(), durable=False)
        self._dirty = False

    def close(self) -> None:
        for repo in self._repos.values():
            with contextlib.suppress(Exception):
                repo.close()
        self._repos.clear()
        self.store.close()

    def _repo(self, root: Path) -> Any:
        root = Path(root).resolve()
        if root not in self._repos:
            from dvc.repo import Repo  # lazy: `expckpt show` must not pay for importing DVC

            self._repos[root] = Repo(str(root))
        return self._repos[root]

    # -- commits ------------------------------------------------------------------------------
    def of_commits(self, commit_trees: Mapping[str, str]) -> set[str]:
        """Objects the metafiles of these commits (sha -> root tree) name."""
        self._load()
        plans: dict[str, list[tuple[tuple[Any, ...], str | None]]] = {}
        todo: dict[tuple[Any, ...], tuple[str, tuple[Any, ...], str | None]] = {}
        for commit, tree in commit_trees.items():
            if commit in self._commits:
                continue
            units = self._units_of(tree)
            plans[commit] = units
            self._touched.update(k for k, _ in units)
            for key, lock in units:
                if key not in self._units and key not in todo:
                    todo[key] = (commit, key, lock)
        if todo:
            self._compute(todo.values())
            self._dirty = True
        used: set[str] = set()
        for commit in commit_trees:
            if commit not in self._commits:
                self._commits[commit] = frozenset().union(*(self._units[k] for k, _ in plans[commit]))
            used |= self._commits[commit]
        return used

    def _units_of(self, tree: str) -> list[tuple[tuple[Any, ...], str | None]]:
        """One key per metafile unit: ``('single', path, blob)`` or ``('pipeline', dir, yaml, lock, ctx)``."""
        files = self.store.files_in_tree(tree, _metafile_or_context, _SKIP_DIRS)
        context = tuple(sorted((p, s) for p, s in files.items() if p.rpartition("/")[2] in _CONTEXT))
        units: list[tuple[tuple[Any, ...], str | None]] = []
        for path, sha in files.items():
            name = path.rpartition("/")[2]
            if name == _PIPELINE:
                folder = _dirname(path)
                lock = files.get(f"{folder}/{_LOCK}" if folder else _LOCK)
                text = self.store.blob(sha) or b""
                templated = b"${" in text or b"vars" in text
                units.append((("pipeline", folder, sha, lock, context if templated else None), lock))
            elif name.endswith(".dvc"):
                units.append((("single", path, sha), None))
            elif name == _LOCK and f"{_dirname(path)}/{_PIPELINE}".lstrip("/") not in files:
                units.append((("orphan-lock", sha), sha))  # a lock without its dvc.yaml: names only
        return units

    def _compute(self, todo: Iterable[tuple[str, tuple[Any, ...], str | None]]) -> None:
        """Fill ``_units`` for every key, switching DVC to one representative commit per group."""
        by_commit: dict[str, list[tuple[tuple[Any, ...], str | None]]] = {}
        groups: dict[tuple[Any, ...], str] = {}
        for commit, key, lock in todo:
            group = key[:3] + key[4:] if key[0] == "pipeline" else key
            rep = groups.setdefault(group, commit)
            by_commit.setdefault(rep, []).append((key, lock))
        repo = self._repo(self.dvc_root)
        with _quiet_dvc():
            for commit, units in by_commit.items():
                pending = []
                for key, lock in units:
                    if key[0] == "orphan-lock":
                        self._units[key] = frozenset(_named(self.store.blob(key[1])))
                    else:
                        pending.append((key, lock))
                if not pending:
                    continue
                with repo.switch(commit):
                    dvcfiles: dict[str, dict[str, Any]] = {}  # one parsed dvc.yaml per folder, for all its locks
                    for key, lock in pending:
                        self._units[key] = frozenset(self._ask_dvc(repo, key, lock, dvcfiles))

    def _ask_dvc(
        self, repo: Any, key: tuple[Any, ...], lock: str | None, dvcfiles: dict[str, dict[str, Any]]
    ) -> set[str]:
        import yaml
        from dvc.exceptions import DvcException

        try:
            if key[0] == "single":
                from dvc.repo.index import Index

                return _values(Index.from_file(repo, f"/{key[1]}").used_objs(force=True))
            folder = key[1]
            path = f"/{folder}/{_PIPELINE}" if folder else f"/{_PIPELINE}"
            return self._pipeline(repo, path, self.store.blob(lock) if lock else None, dvcfiles.setdefault(path, {}))
        except (DvcException, yaml.YAMLError, ValueError, TypeError, KeyError, OSError):  # a lock that is not YAML too
            names = set()
            for sha in (key[2], lock):
                if sha:
                    names |= _named(self.store.blob(sha))
            return names

    @staticmethod
    def _pipeline(repo: Any, path: str, lock: bytes | None, dvcfile_box: dict[str, Any]) -> set[str]:
        """DVC's used objects of the ``dvc.yaml`` at ``path`` (in ``repo.fs``) filled from ``lock``.

        ``dvcfile_box`` keeps the parsed ``dvc.yaml`` for the next lock of the same file.
        """
        import yaml
        from dvc.dvcfile import Lockfile, ProjectFile
        from dvc.stage.loader import StageLoader

        dvcfile = dvcfile_box.get("dvcfile")
        if dvcfile is None:
            dvcfile = dvcfile_box["dvcfile"] = ProjectFile(repo, path)
        lock_data: dict[str, Any] = {}
        if lock:
            loaded = yaml.load(lock, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            lock_data = Lockfile.validate(loaded, fname=path) if loaded else {}
        used: set[str] = set()
        for stage in StageLoader(dvcfile, dvcfile.contents, lock_data).values():
            used |= _values(stage.get_used_objs(force=True))
            used |= {o.hash_info.value for o in stage.outs if o.hash_info and o.hash_info.value}
        return used

    # -- workspaces -----------------------------------------------------------------------------
    def of_workspace(self, workspace: Path) -> set[str]:
        """Objects the workspace's metafiles (committed or not, any directory) and notes name."""
        workspace = Path(workspace).resolve()
        listed = None
        if workspace == self.store.git_dir.parent.resolve():
            listed = self.store.worktree_files(workspace, _WORKSPACE_PATTERNS)
        used = self._listed_workspace(workspace, listed) if listed is not None else self._whole_workspace(workspace)
        notes = workspace / ".dvc" / "tmp" / "expckpt"
        for note in notes.glob("*.json") if notes.is_dir() else []:
            parsed = SessionNote.read(workspace, note.stem.replace("__", "/"))
            if parsed is not None:
                used.add(parsed.md5)
        return used

    def _listed_workspace(self, workspace: Path, listed: list[str]) -> set[str]:
        """Per metafile, DVC's answer memoised on content (the training loop rewrites only dvc.lock).

        Like DVC's own collection, files Git ignores are not metafiles; unlike it, files
        ``.dvcignore`` hides still count (keeping more is safe).
        """
        contents: dict[str, bytes] = {}
        for rel in listed:
            if _metafile_or_context(rel.rpartition("/")[2]):
                with contextlib.suppress(OSError):
                    contents[rel] = (workspace / rel).read_bytes()
        digest = {rel: hashlib.sha1(data).hexdigest() for rel, data in contents.items()}
        context = tuple(sorted((r, d) for r, d in digest.items() if r.rpartition("/")[2] in _CONTEXT))
        self._load()
        used: set[str] = set()
        with _quiet_dvc():
            for rel, data in contents.items():
                name, folder = rel.rpartition("/")[2], _dirname(rel)
                lock_rel = f"{folder}/{_LOCK}" if folder else _LOCK
                group: tuple[Any, ...]
                key: tuple[Any, ...]
                if name == _PIPELINE:
                    templated = b"${" in data or b"vars" in data
                    group = ("ws", str(workspace), rel, digest[rel], context if templated else None)
                    key = (*group, digest.get(lock_rel))
                elif name.endswith(".dvc"):
                    group = key = ("ws", str(workspace), rel, digest[rel])
                elif name == _LOCK and f"{folder}/{_PIPELINE}".lstrip("/") not in contents:
                    used |= _named(data)
                    continue
                else:
                    continue
                self._touched.add(key)
                if key not in self._units:
                    from dvc.exceptions import DvcException
                    from dvc.repo.index import Index

                    self._dirty = True
                    repo = self._repo(workspace)
                    try:
                        if name == _PIPELINE:
                            box = self._ws_dvcfiles.setdefault(group, {})
                            found = self._pipeline(repo, str(workspace / rel), contents.get(lock_rel), box)
                        else:
                            found = _values(Index.from_file(repo, str(workspace / rel)).used_objs(force=True))
                    except (DvcException, ValueError, TypeError, KeyError, OSError):
                        found = _named(data) | _named(contents.get(lock_rel) if name == _PIPELINE else None)
                    self._units[key] = frozenset(found)
                used |= self._units[key]
        return used

    def _whole_workspace(self, workspace: Path) -> set[str]:
        """DVC's own collection over a workspace this store does not list (a ``--temp`` copy)."""
        from dvc.exceptions import DvcException
        from dvc.repo.index import Index

        used: set[str] = set()
        repo = self._repo(workspace)
        unreadable: list[str] = []
        with _quiet_dvc():
            try:
                index = Index.from_repo(repo, onerror=lambda rel, exc: unreadable.append(rel))
                used |= _values(index.used_objs(force=True))
            except DvcException:
                unreadable.extend(
                    str(p)
                    for p in workspace.rglob("*")
                    if p.is_file()
                    and _metafile_or_context(p.name)
                    and not {".git", ".dvc"} & set(p.relative_to(workspace).parts)
                )
        for rel in unreadable:
            with contextlib.suppress(OSError):
                used |= _named(Path(rel).resolve().read_bytes())
        return used
