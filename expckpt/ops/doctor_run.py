"""``expckpt doctor``'s runs: the user's stage, run by ``dvc exp run`` in throwaway copies.

A is trained straight to step 2K; B to step K, stopped there the way a preemption stops it
(``EXPCKPT_STOP_AFTER_STEP``: a complete checkpoint, then the run ends), then resumed by a second
``dvc exp run`` to 2K. Each copy is a fresh Git repository (one commit of the workspace's files as
they are now, tracked and untracked, and the stage's non-checkpoint DVC outputs) with a fresh DVC
cache in a temporary directory: the user's refs, cache, params and checkpoint are never touched.
Steps are dvclive's, counted from 0: "step K" is the K-th completed step, ``K - 1``.

The copy is made with the git command line (``ls-files`` with the workspace's own ignore rules,
then ``init``/``add``/``commit`` in the copy): like ``GitStore``'s workspace snapshot, that is git's
index and ignore logic, which dulwich applies only in part. Nothing here touches the user's
repository but that read-only ``ls-files``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from expckpt.errors import ConfigError, ProjectError
from expckpt.store.project import Project, StageOutput
from expckpt.policy.stopafter import ENV

__all__ = ["DoctorPlan", "copy_workspace", "doctor_plan", "run_stage", "throwaway"]

_GIT_ID = ["-c", "user.name=expckpt doctor", "-c", "user.email=doctor@expckpt.invalid", "-c", "commit.gpgsign=false"]
_FIXED_DATE = "2000-01-01T00:00:00+0000"  # both copies get the same baseline commit
_TAIL = 6
"""Lines of a failed run's output quoted in the error."""
_NOISE = ("WARNING: ", "Reproducing experiment ")
"""DVC's lines about the copy itself, not about the failure."""


@dataclass(frozen=True)
class DoctorPlan:
    """What the doctor runs: ``stage``'s checkpoint ``output``, K = ``steps``."""

    project: Project
    stage: str
    output: StageOutput
    steps: int
    live_dir: str = "dvclive"

    @property
    def stop_first(self) -> int:
        """B's first run stops after this step (K - 1)."""
        return self.steps - 1

    @property
    def last(self) -> int:
        """Both end after this step (2K - 1)."""
        return 2 * self.steps - 1


def doctor_plan(project: Project, stage: str | None, steps: int) -> DoctorPlan:
    """Check the arguments against dvc.yaml and params.yaml; one line for each kind of bad input."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(
            f"--steps must be a whole number of steps, 1 or more, got {steps!r}; e.g. --steps 2",
            key="steps",
            value=steps,
        )
    outputs = project.outputs()
    stages = sorted({o.stage for o in outputs} | set(project.stage_specs()))
    if stage is not None and stage not in stages:
        raise ConfigError(
            f"dvc.yaml has no stage {stage!r} (it has: {', '.join(stages) or 'none'}); pass one of them with --stage",
            key="stage",
            value=stage,
        )
    candidates = [o for o in outputs if o.checkpoint and (stage is None or o.stage == stage)]
    if not candidates:
        where = f"stage {stage!r}" if stage else "dvc.yaml"
        raise ProjectError(
            f"{where} has no output with `checkpoint: true`, so there is no resume to check; declare"
            " the checkpoint file as `- model.pt: {checkpoint: true, persist: true}` under the stage's outs",
            path=project.workspace / "dvc.yaml",
        )
    names = sorted({o.stage for o in candidates})
    if len(names) > 1:
        raise ConfigError(
            f"several stages have checkpoint outputs ({', '.join(names)}); say which with --stage", key="stage"
        )
    if len({o.path for o in candidates}) > 1:
        raise ConfigError(
            f"stage {names[0]!r} has several checkpoint outputs"
            f" ({', '.join(o.path for o in candidates)}); the doctor checks stages with one",
            key="stage",
        )
    output = candidates[0]
    project.checkpoint_output(output.path, output.stage)  # persist: true, or nothing resumes
    _check_params(project)
    return DoctorPlan(project=project, stage=output.stage, output=output, steps=steps)


def _check_params(project: Project) -> None:
    try:
        params = yaml.safe_load((project.workspace / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return
    section = params.get("checkpoint") if isinstance(params, dict) else None
    if isinstance(section, dict) and section.get("every") == 0:
        raise ConfigError(
            "params.yaml has checkpoint.every: 0 (checkpointing off), so nothing resumes;"
            " set it to 1 or more to check the resume",
            key="checkpoint.every",
            value=0,
        )


@contextmanager
def throwaway() -> Iterator[Path]:
    """A temporary directory outside the project, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="expckpt-doctor-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, env=env)
    if proc.returncode != 0:
        raise ProjectError(f"git {args[0]} failed in {cwd}: {proc.stderr.decode(errors='replace').strip()}", path=cwd)
    return proc.stdout.decode(errors="surrogateescape")


def _workspace_files(plan: DoctorPlan) -> tuple[list[str], list[str]]:
    """(tracked and untracked files that are not ignored, the stage outputs that are not checkpoints)."""
    root = plan.project.workspace
    listed = _git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], root).split("\0")
    skip = (plan.output.path.rstrip("/"), plan.live_dir)
    files = [f for f in listed if f and not any(f == s or f.startswith(s + "/") for s in skip)]
    outputs = [o.path.rstrip("/") for o in plan.project.outputs() if not o.checkpoint and (root / o.path).exists()]
    return sorted(set(files) - set(outputs)), sorted(set(outputs))


def copy_workspace(plan: DoctorPlan, dest: Path) -> Path:
    """A fresh Git + DVC repository at ``dest`` with the workspace's files, committed once."""
    root = plan.project.workspace
    files, outputs = _workspace_files(plan)
    for rel in files:
        src, dst = root / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            continue  # tracked but deleted in the workspace: as it is now
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    for rel in outputs:  # DVC outputs: their contents, never links into the user's cache
        src, dst = root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=False)
        else:
            shutil.copyfile(src, dst)
    env = {**os.environ, "GIT_AUTHOR_DATE": _FIXED_DATE, "GIT_COMMITTER_DATE": _FIXED_DATE}
    _git(["init", "-q"], dest, env)
    (dest / ".dvc").mkdir(exist_ok=True)
    # a fresh cache here, whatever .dvc/config says (a shared cache.dir must not get our objects)
    (dest / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {dest / '.dvc' / 'cache'}\n")
    _git(["add", "-A"], dest, env)
    _git([*_GIT_ID, "commit", "-q", "--allow-empty", "-m", "expckpt doctor: the workspace as it is"], dest, env)
    return dest


@dataclass(frozen=True)
class Ran:
    """One finished ``dvc exp run``: its output and how long it took."""

    output: str
    seconds: float


def _child_env(stop_after: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_EXP_", "EXPCKPT_", "DVCLIVE_")) and k not in ("DVC_ROOT", "DVC_STAGE")
    }
    env[ENV] = str(stop_after)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _pushes(params: Path) -> bool:
    """params.yaml sets ``checkpoint.push``."""
    try:
        section = (yaml.safe_load(params.read_text()) or {}).get("checkpoint")
    except (OSError, AttributeError, yaml.YAMLError):
        return False
    return isinstance(section, dict) and bool(section.get("push"))


def run_stage(
    plan: DoctorPlan, copy: Path, name: str, stop_after: int, log: Callable[[str], None] | None = None
) -> Ran:
    """``dvc exp run -n NAME STAGE`` in ``copy``, stopping after step ``stop_after``."""
    args = [sys.executable, "-m", "dvc", "exp", "run", "-n", name, plan.stage]
    if _pushes(copy / "params.yaml"):
        args[5:5] = ["-S", "checkpoint.push=null"]  # the copy has no Git remote to push to
    start = time.monotonic()
    proc = subprocess.Popen(
        args,
        cwd=copy,
        env=_child_env(stop_after),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if log is not None:
            log(line.rstrip("\n"))
    proc.wait()
    output = "".join(lines)
    if proc.returncode != 0:
        said = [line.strip() for line in lines if line.strip() and not line.startswith(_NOISE)]
        raise ProjectError(
            f"stage {plan.stage!r} failed in the doctor's copy ({name}, `dvc exp run` exit"
            f" {proc.returncode}); fix it so `dvc exp run` succeeds, then try again; its last lines:"
            f" {' | '.join(said[-_TAIL:])}",
            path=copy,
        )
    return Ran(output=output, seconds=time.monotonic() - start)
