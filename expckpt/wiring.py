"""Finding out where training runs and connecting the parts a Checkpointer needs.

Inside ``dvc exp run`` (DVC's variables are set) checkpoints are published as experiment refs:
the project, its Git store, the DVC cache and the stage's checkpoint output are found and
checked here, once. Outside, only the file's place is needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from expckpt.cache import DvcCache
from expckpt.committer import Committer
from expckpt.errors import ProjectError
from expckpt.gitstore import GitStore
from expckpt.project import Project, RunContext
from expckpt.records import CheckpointRecord

__all__ = ["Wiring", "wire"]

DEFAULT_PATH = "model.pt"


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


def _default_path(project: Project | None, stage: str | None) -> str:
    """The stage's ``checkpoint: true`` output when there is exactly one, else ``model.pt``."""
    if project is None:
        return DEFAULT_PATH
    try:
        outs = [o for o in project.outputs() if o.checkpoint and (stage is None or o.stage == stage)]
    except ProjectError:
        return DEFAULT_PATH
    return outs[0].path if len(outs) == 1 else DEFAULT_PATH


def wire(path: str | os.PathLike[str] | None, *, live_dir: str = "dvclive", env: Mapping[str, str] | None = None) -> Wiring:
    run = RunContext.from_env(env)
    if run is None:
        try:
            project: Project | None = Project.discover(env={})
        except ProjectError:
            project = None
        rel = Path(path).as_posix() if path is not None else _default_path(project, None)
        return Wiring(path=Path(rel).resolve(), rel_path=rel, workspace=Path.cwd(), live_dir=live_dir)
    project = Project.discover(env=env)
    rel = Path(path).as_posix() if path is not None else _default_path(project, run.stage)
    project.checkpoint_output(rel, run.stage)
    store = GitStore.open(project.root)
    if not store.has_commit(run.baseline):
        raise ProjectError(f"baseline {run.baseline} of this run is not in {project.root}", path=project.root)
    cache = DvcCache.for_project(project.root, store.git_dir)
    live_paths = [live_dir, *(p for p in project.tracked_live_paths() if not p.startswith(live_dir))]
    committer = Committer(project=project, run=run, store=store, cache=cache, checkpoint_path=rel, live_paths=live_paths)
    # DVC's view of the stage and the cache settings, read at start-up, not at the first checkpoint
    committer.prepare()
    cache.settings  # noqa: B018
    return Wiring(path=project.workspace / rel, rel_path=rel, workspace=project.workspace, live_dir=live_dir,
                  committer=committer)
