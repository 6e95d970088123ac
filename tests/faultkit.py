"""Helpers for the fault-injection, verify, bad-input, security and signal tests.

One template project (the example pipeline with ``EPOCHS`` epochs, ``data/`` made by
``dvc repro download`` and its dvc.lock committed, so ``dvc exp run`` skips the download) is
built once per session and copied for each test, and one uninterrupted reference run of it is
made once. Everything runs for real: Git, DVC, train.py as a subprocess.

The crash-safety checks (``check_consistent``, ``resume_problems``, ``same_state``, ...) live
in ``oracle``, shared with bench/crash_trials.py; they are re-exported here for the tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conftest import make_project, run
from oracle import (  # noqa: F401  (re-exported for the tests)
    TEMP_MARK,
    CliResult,
    Ref,
    cache_object,
    check_consistent,
    checkpoint_refs,
    cli,
    first_epoch,
    independent_problems,
    locked_model,
    md5_of,
    resume_problems,
    resumed_from,
    same_state,
    steps,
)

EPOCHS = 3
# One intra-op thread: on a 2-core CI machine training runs ~40% faster than with torch's
# default, and the thread count is the same in every run a test compares (results depend on it).
FAST = {"OMP_NUM_THREADS": "1"}
_CACHE: dict[str, Path] = {}
_LOCK = threading.Lock()


# -- projects ----------------------------------------------------------------------------------
def template(factory) -> Path:
    """The session's template project (built on first use)."""
    with _LOCK:
        if "template" not in _CACHE:
            root = make_project(factory.mktemp("template") / "p", epochs=EPOCHS)
            run("dvc", "repro", "download", cwd=root)
            run("git", "add", "dvc.lock", cwd=root)
            run("git", "commit", "-qm", "download stage", cwd=root)
            _CACHE["template"] = root
        return _CACHE["template"]


def clone(factory, dest: Path) -> Path:
    """A private copy of the template (same commits, so the same baseline sha)."""
    shutil.copytree(template(factory), dest, symlinks=True)
    return dest


def reference(factory) -> Path:
    """model.pt of an uninterrupted run of the template, ``EPOCHS`` epochs (made once)."""
    with _LOCK:
        if "reference" in _CACHE:
            return _CACHE["reference"]
    project = clone(factory, factory.mktemp("reference") / "p")
    train(project, "straight")
    with _LOCK:
        _CACHE["reference"] = project / "model.pt"
    return project / "model.pt"


def trained(factory, dest: Path) -> Path:
    """A private copy of the reference project: checkpoints ``straight@0..EPOCHS-1`` complete.

    copytree does not keep hard links, so the one expckpt makes between model.pt and the newest
    checkpoint's cache object is made again: the copy is laid out as training left it.
    """
    shutil.copytree(reference(factory).parent, dest, symlinks=True)
    model = dest / "model.pt"
    obj = cache_object(dest, hashlib.md5(model.read_bytes()).hexdigest())
    model.unlink()
    os.link(obj, model)
    return dest


def snapshot(project: Path) -> dict[str, object]:
    """Everything a failed run must leave alone: all refs, the cache objects and their bytes'
    hashes, the checkpoint note and the workspace dvc.lock."""
    refs = run("git", "for-each-ref", "--format=%(refname) %(objectname)", cwd=project).stdout
    objects = {
        str(p.relative_to(project)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted((project / ".dvc" / "cache").rglob("*"))
        if p.is_file()
    }
    note = project / ".dvc" / "tmp" / "expckpt" / "model.pt.json"
    lock = project / "dvc.lock"
    return {
        "refs": refs,
        "objects": objects,
        "note": note.read_text() if note.exists() else None,
        "dvc.lock": lock.read_text() if lock.exists() else None,
    }


def head(project: Path) -> str:
    return run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()


def dvc_env(project: Path, exp: str, **extra: str) -> dict[str, str]:
    """The variables ``dvc exp run`` sets for a stage, so train.py can run without DVC around it."""
    return {
        "DVC_ROOT": str(project),
        "DVC_EXP_NAME": exp,
        "DVC_EXP_BASELINE_REV": head(project),
        "DVC_STAGE": "train",
        **extra,
    }


def train(project: Path, exp: str | None, *, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    """``python train.py`` as ``dvc exp run`` would start it (``exp=None``: outside DVC)."""
    env = dvc_env(project, exp, **extra) if exp else dict(extra)
    return run("python", "train.py", cwd=project, env={**FAST, **env}, check=check)


def dvc_exp_run(project: Path, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    """The real ``dvc exp run ARGS`` (``extra``: environment variables for it and train.py)."""
    return run("dvc", "exp", "run", *args, cwd=project, env={**FAST, **extra}, check=check)


def set_param(project: Path, key: str, value: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def leftover_temps(project: Path) -> list[Path]:
    return [p for p in project.rglob(f"*{TEMP_MARK}*") if ".git" not in p.parts]


# -- processes that run in the background -----------------------------------------------------------
@dataclass
class Background:
    """A process whose stdout and stderr lines are collected as they come."""

    proc: subprocess.Popen
    lines: list[tuple[str, str]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def start(cls, args: list[str], cwd: Path, env: dict[str, str], *, group: bool = False) -> Background:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **FAST, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=group,
        )
        bg = cls(proc)
        for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
            threading.Thread(target=bg._pump, args=(name, stream), daemon=True).start()
        return bg

    def _pump(self, name: str, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append((name, line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self.lines.append((name, None))  # type: ignore[arg-type]
            self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 120) -> str:
        """Block until a line containing ``needle`` appears; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, line in self.lines:
                    if line is not None and needle in line:
                        return line
                if sum(1 for _, line in self.lines if line is None) == 2:
                    raise AssertionError(f"process ended without printing {needle!r}:\n{self.text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} after {timeout} s:\n{self.text()}")
                self._cond.wait(left)

    def wait(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout)
        with self._cond:
            self._cond.wait_for(lambda: sum(1 for _, line in self.lines if line is None) == 2, 10)
        return code

    def text(self, which: str | None = None) -> str:
        return "\n".join(line for name, line in list(self.lines) if line is not None and which in (None, name))

    @property
    def stdout(self) -> str:
        return self.text("out")

    @property
    def stderr(self) -> str:
        return self.text("err")
