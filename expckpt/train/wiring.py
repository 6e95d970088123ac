"""Finding out where training runs and connecting the parts a Checkpointer needs.

Inside ``dvc exp run`` (DVC's variables are set) checkpoints are published as experiment refs:
the project, its Git store, the DVC cache and the stage's checkpoint output are found and
checked here, once. Outside, only the file's place is needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from expckpt.store.cache import DvcCache
from expckpt.publish.committer import Committer
from expckpt.errors import ConfigError, ProjectError
from expckpt.ops.gc import free_dropped
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project, RunContext
from expckpt.store.records import CheckpointRecord

__all__ = ["Wiring", "wire"]

DEFAULT_PATH = "model.pt"


@dataclass(frozen=True)
class OutputSpec:
    """One checkpoint output: a file, or a directory (declared ``ckpt/`` or already one)."""

    rel_path: str
    path: Path
    is_dir: bool = False


@dataclass(frozen=True)
class Wiring:
    """Where the checkpoint file is, and who publishes it (None outside ``dvc exp run``)."""

    path: Path
    rel_path: str
    workspace: Path
    live_dir: str = "dvclive"
    committer: Committer | None = None
    free: Callable[[Sequence[CheckpointRecord]], int] | None = None
    """Frees the cache objects of checkpoints retention dropped (None: left to ``expckpt gc``)."""
    outputs: tuple[OutputSpec, ...] = ()
    """Every checkpoint output of the run, the first being ``path`` (empty: just ``path``)."""

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", (OutputSpec(self.rel_path, self.path, self.path.is_dir()),))


def _default_path(project: Project | None, stage: str | None) -> str:
    """The stage's ``checkpoint: true`` output when there is exactly one, else ``model.pt``."""
    if project is None:
        return DEFAULT_PATH
    try:
        outs = [o for o in project.outputs() if o.checkpoint and (stage is None or o.stage == stage)]
    except ProjectError:
        return DEFAULT_PATH
    if len(outs) > 1 and stage is not None:
        paths = ", ".join(o.path for o in outs)
        raise ConfigError(
            f"stage {stage!r} has several checkpoint outputs ({paths}); say which state goes to which:"
            f" CheckpointLive.from_env({{{', '.join(repr(o.path) + ': ...' for o in outs)}}}, params)",
            key="path",
        )
    return outs[0].path if len(outs) == 1 else DEFAULT_PATH


PathArg = str | os.PathLike[str]


def _declared_dirs(project: Project | None) -> set[str]:
    """Checkpoint outputs dvc.yaml declares as directories (``- ckpt/: {checkpoint: true}``)."""
    if project is None:
        return set()
    try:
        return {Path(o.path).as_posix() for o in project.outputs() if o.checkpoint and o.path.endswith("/")}
    except ProjectError:
        return set()


def _specs(paths: list[str], given: list[PathArg], base: Path, project: Project | None) -> tuple[OutputSpec, ...]:
    declared = _declared_dirs(project)
    specs = tuple(
        OutputSpec(rel, base / rel, rel in declared or os.fspath(g).endswith("/") or (base / rel).is_dir())
        for rel, g in zip(paths, given)
    )
    for spec in specs:
        _refuse_symlink(spec.rel_path, base)
    return specs


def _refuse_symlink(rel: str, base: Path) -> None:
    """A checkpoint output (or a folder above it in the workspace) that is a symbolic link is
    refused before training: publishing a directory checkpoint removes the files its manifest
    does not list, and DVC checks outputs out over what is there, so files of the user's behind
    the link (a scratch disk holding more than checkpoints) would be deleted."""
    parts = Path(rel).parts
    for i in range(len(parts), 0, -1):
        path = base.joinpath(*parts[:i])
        if path.is_symlink():
            shown = Path(*parts[:i]).as_posix()
            raise ProjectError(
                f"checkpoint output {rel} goes through a symbolic link ({shown} -> {os.readlink(path)}); expckpt and"
                f" DVC replace what is inside an output, so other files behind the link could be deleted: make {shown}"
                " a real directory (to keep checkpoints on another disk, put DVC's cache there: `dvc cache dir <path>`)",
                path=path,
            )


def wire(
    path: PathArg | Sequence[PathArg] | None,
    *,
    live_dir: str = "dvclive",
    env: Mapping[str, str] | None = None,
) -> Wiring:
    """Wire one checkpoint output (``path``) or several (a list of paths, published together)."""
    given: list[PathArg] | None = (
        None if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    )
    run = RunContext.from_env(env)
    if run is None:
        try:
            project: Project | None = Project.discover(env={})
        except ProjectError:
            project = None
        given = given or [_default_path(project, None)]
        rels = [Path(g).as_posix() for g in given]
        outputs = _specs(rels, given, Path.cwd(), project)
        outputs = tuple(OutputSpec(o.rel_path, o.path.resolve(), o.is_dir) for o in outputs)
        return Wiring(path=outputs[0].path, rel_path=rels[0], workspace=Path.cwd(), live_dir=live_dir, outputs=outputs)
    project = Project.discover(env=env)
    given = given or [_default_path(project, run.stage)]
    rels = [Path(g).as_posix() for g in given]
    for rel in rels:
        project.checkpoint_output(rel, run.stage)
    rel = rels[0]
    store = GitStore.open(project.root)
    if not store.has_commit(run.baseline):
        raise ProjectError(f"baseline {run.baseline} of this run is not in {project.root}", path=project.root)
    cache = DvcCache.for_project(project.root, store.git_dir)
    live_paths = [live_dir, *(p for p in project.tracked_live_paths() if not p.startswith(live_dir))]
    committer = Committer(
        project=project, run=run, store=store, cache=cache, checkpoint_path=rel, live_paths=live_paths
    )
    committer.checkpoint_paths = rels
    # DVC's view of the stage and the cache settings, read at start-up, not at the first checkpoint
    committer.prepare()
    cache.settings  # noqa: B018
    return Wiring(
        path=project.workspace / rel,
        rel_path=rel,
        workspace=project.workspace,
        live_dir=live_dir,
        committer=committer,
        free=partial(free_dropped, store, cache, project.workspace),
        outputs=_specs(rels, given, project.workspace, project),
    )
