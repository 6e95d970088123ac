"""The dvc.lock a checkpoint commit carries, so DVC can check its outputs out of the cache.

Dependencies and params are read once per run (they do not change while training); each
checkpoint only fills in the hashes of its checkpoint outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from expckpt.atomic import md5_file
from expckpt.project import Project
from expckpt.records import OutputHash

__all__ = ["LockBuilder"]

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.load(path.read_text(), Loader=_Loader) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return {}


class LockBuilder:
    """Renders dvc.lock for one stage with fresh checkpoint-output hashes."""

    def __init__(self, base_lock: dict[str, Any], stage: str, entry: dict[str, Any]) -> None:
        self._base = base_lock
        self._stage = stage
        self._entry = entry

    @classmethod
    def prepare(cls, project: Project, stage: str) -> LockBuilder:
        workspace = project.workspace
        base = _read_yaml(workspace / "dvc.lock")
        base.setdefault("schema", "2.0")
        base.setdefault("stages", {})
        spec = project.stage_spec(stage)
        other_outs = {
            out["path"]: out
            for name, st in base["stages"].items()
            if name != stage and isinstance(st, dict)
            for out in st.get("outs") or []
            if isinstance(out, dict) and "path" in out
        }
        entry: dict[str, Any] = {"cmd": spec.get("cmd")}
        deps = []
        for dep in spec.get("deps") or []:
            dep = str(dep)
            if dep in other_outs:
                deps.append(dict(other_outs[dep]))
            elif (workspace / dep).is_file():
                md5, size = md5_file(workspace / dep)
                deps.append({"path": dep, "hash": "md5", "md5": md5, "size": size})
            else:
                deps.append({"path": dep})
        if deps:
            entry["deps"] = deps
        params = cls._params(workspace, spec.get("params") or [])
        if params:
            entry["params"] = params
        return cls(base, stage, entry)

    @staticmethod
    def _params(workspace: Path, declared: list[Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        files: dict[str, dict[str, Any]] = {}

        def load(name: str) -> dict[str, Any]:
            if name not in files:
                files[name] = _read_yaml(workspace / name)
            return files[name]

        for item in declared:
            if isinstance(item, str):
                out.setdefault("params.yaml", {})[item] = _lookup(load("params.yaml"), item)
            elif isinstance(item, dict):
                for name, keys in item.items():
                    values = load(str(name))
                    chosen = values if not keys else {k: _lookup(values, k) for k in keys}
                    out.setdefault(str(name), {}).update(chosen)
        return out

    def render(self, outs: Mapping[str, OutputHash]) -> bytes:
        entry = dict(self._entry)
        entry["outs"] = [
            {"path": path, "hash": "md5", "md5": h.md5, "size": h.size} for path, h in outs.items()
        ]
        lock = {"schema": self._base["schema"], "stages": {**self._base["stages"], self._stage: entry}}
        return yaml.dump(lock, Dumper=_Dumper, sort_keys=False, default_flow_style=False).encode()
