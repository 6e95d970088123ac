"""Where we are: the Git + DVC project, the workspace, and the ``dvc exp run`` in progress."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from expckpt.errors import ConfigError, ProjectError
from expckpt.store.refs import validate_exp_name

__all__ = ["Project", "RunContext", "StageOutput"]


@dataclass(frozen=True)
class RunContext:
    """The ``dvc exp run`` this process runs under, from the variables DVC sets."""

    exp_name: str
    baseline: str
    stage: str | None
    dvc_root: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunContext | None:
        """``None`` outside ``dvc exp run`` (plain ``python train.py`` or ``dvc repro``)."""
        env = os.environ if env is None else env
        name, baseline, root = (env.get(k) for k in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT"))
        if not (name and baseline and root):
            return None
        return cls(
            exp_name=validate_exp_name(name),
            baseline=baseline,
            stage=env.get("DVC_STAGE") or None,
            dvc_root=Path(root),
        )


@dataclass(frozen=True)
class StageOutput:
    """One output of a dvc.yaml stage, with the flags checkpoints care about."""

    stage: str
    path: str
    checkpoint: bool
    persist: bool
    cache: bool


def _find_up(start: Path, marker: str) -> Path | None:
    for directory in (start, *start.parents):
        if (directory / marker).exists():
            return directory
    return None


@dataclass(frozen=True)
class Project:
    """A Git + DVC project: ``root`` holds ``.git`` and ``.dvc``; ``workspace`` is where files
    are read (the root itself, or the temp copy of a ``--temp``/queued run)."""

    root: Path
    workspace: Path

    @classmethod
    def discover(cls, start: Path | None = None, env: Mapping[str, str] | None = None) -> Project:
        env = os.environ if env is None else env
        here = Path(start or Path.cwd()).resolve()
        workspace = _find_up(here, ".dvc")
        if _find_up(here, ".git") is None:
            raise ProjectError(
                f"{here} is not inside a Git repository; run `git init && dvc init` there first",
                path=here,
            )
        if workspace is None:
            raise ProjectError(
                f"{here} is not a DVC project; run `dvc init` in the repository root first",
                path=here,
            )
        root = Path(env["DVC_ROOT"]).resolve() if env.get("DVC_ROOT") else workspace
        return cls(root=root, workspace=workspace)

    @property
    def git_dir(self) -> Path:
        return self.root / ".git"

    def dvc_yaml(self) -> dict[str, Any]:
        path = self.workspace / "dvc.yaml"
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ProjectError(f"{path} does not exist; add a stage with a checkpoint output", path=path) from None
        except yaml.YAMLError as exc:
            raise ProjectError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}", path=path) from None
        return data

    def stage_specs(self) -> dict[str, Any]:
        """Stage name -> definition; ``foreach``/``matrix`` stages (``train@lr1``) and ``${...}``
        are resolved by DVC's own resolver, which keeps ``checkpoint: true`` (DVC's loader drops it)."""
        data = self.dvc_yaml()
        stages = data.get("stages") or {}
        if not any(
            isinstance(s, dict) and ("foreach" in s or "matrix" in s) for s in stages.values()
        ) and "${" not in str(data):
            return dict(stages)
        from dvc.exceptions import DvcException
        from dvc.dvcfile import ProjectFile
        from dvc.repo import Repo

        path = self.workspace / "dvc.yaml"
        try:
            with Repo(str(self.workspace)) as repo:
                return dict(ProjectFile(repo, str(path)).resolver.resolve().get("stages") or {})
        except DvcException as exc:
            raise ProjectError(f"DVC cannot resolve {path}: {exc}", path=path) from exc

    def outputs(self) -> list[StageOutput]:
        found = []
        for stage, spec in self.stage_specs().items():
            for out in (spec or {}).get("outs") or []:
                path, flags = (out, {}) if isinstance(out, str) else next(iter(out.items()))
                flags = flags or {}
                found.append(
                    StageOutput(
                        stage=stage,
                        path=str(path),
                        checkpoint=bool(flags.get("checkpoint")),
                        persist=bool(flags.get("persist")),
                        cache=flags.get("cache", True) is not False,
                    )
                )
        return found

    def checkpoint_output(self, path: str, stage: str | None = None) -> StageOutput:
        """The dvc.yaml output for the checkpoint file ``path``, checked for what resuming needs."""
        outs = [o for o in self.outputs() if o.checkpoint and (stage is None or o.stage == stage)]
        if not outs:
            raise ProjectError(
                f"dvc.yaml has no output with `checkpoint: true`{f' in stage {stage!r}' if stage else ''};"
                f" declare {path} as `- {path}: {{checkpoint: true, persist: true}}` under the"
                " stage's outs",
                path=self.workspace / "dvc.yaml",
            )
        for out in outs:
            if Path(out.path) == Path(path):
                if not out.persist:
                    raise ConfigError(
                        f"output {path} in dvc.yaml needs `persist: true`, or DVC deletes it before"
                        " every run and nothing can resume; add it next to `checkpoint: true`",
                        key=f"stages.{out.stage}.outs.{path}.persist",
                    )
                return out
        raise ConfigError(
            f"checkpoint file {path!r} is not a checkpoint output in dvc.yaml (those are:"
            f" {', '.join(o.path for o in outs)}); pass one of them",
            key="path",
            value=path,
        )

    def tracked_live_paths(self) -> list[str]:
        """Metrics and plots files declared in dvc.yaml (committed with each checkpoint)."""
        data = self.dvc_yaml()
        paths: list[str] = list(data.get("metrics") or [])
        for plot in data.get("plots") or []:
            if isinstance(plot, str):
                paths.append(plot)
            elif isinstance(plot, dict):
                for key, spec in plot.items():
                    paths.append(key)
                    if isinstance(spec, dict) and isinstance(spec.get("y"), dict):
                        paths.extend(spec["y"].keys())
        seen: list[str] = []
        for p in paths:
            if isinstance(p, str) and p not in seen and (self.workspace / p).exists() is not None:
                seen.append(p.rstrip("/"))
        return seen
