"""Helpers for the fault-injection, verify, bad-input, security and signal tests.

One template project (the example pipeline with ``EPOCHS`` epochs, ``data/`` made by
``dvc repro download`` and its dvc.lock committed, so ``dvc exp run`` skips the download) is
built once per session and copied for each test, and one uninterrupted reference run of it is
made once. Everything runs for real: Git, DVC, train.py as a subprocess.

``check_consistent`` is the invariant every test asserts after a crash, computed twice: once by
``expckpt verify --all`` and once independently here (Git plumbing, YAML, hashlib), so a bug
shared by expckpt's reader and writer cannot hide itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from conftest import make_project, run

EPOCHS = 3
# One intra-op thread: on a 2-core CI machine training runs ~40% faster than with torch's
# default, and the thread count is the same in every run a test compares (results depend on it).
FAST = {"OMP_NUM_THREADS": "1"}
TEMP_MARK = ".expckpt-tmp-"
_CACHE: dict[str, Path] = {}
_LOCK = threading.Lock()
RESUMED = re.compile(r"Resuming from model\.pt(?: \((?P<name>[^)]+)\))?: (?P<done>\d+) steps done")
EPOCH = re.compile(r"^epoch (?P<n>\d+):", re.M)


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


# -- the CLI, in process (importing expckpt costs seconds of torch import per subprocess) -------
@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(project: Path, *args: str) -> CliResult:
    """``expckpt ARGS`` run in ``project`` by the same ``main`` the console script calls."""
    from expckpt.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("DVC_EXP") or k in ("DVC_ROOT", "DVC_STAGE")}
    os.chdir(project)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(old)
        os.environ.update(saved)
    return CliResult(code, out.getvalue(), err.getvalue())


# -- what the repository holds -----------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    ref: str
    name: str
    exp: str
    step: int
    commit: str


def checkpoint_refs(project: Path) -> dict[str, Ref]:
    """Every ``<exp>@<step>`` ref under refs/exps, by name."""
    out = run("git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps", cwd=project).stdout
    refs = {}
    for line in out.splitlines():
        ref, sha = line.split()
        name = ref.rsplit("/", 1)[-1]
        if "@" in name and not ref.startswith("refs/exps/exec/"):
            exp, _, step = name.rpartition("@")
            refs[name] = Ref(ref, name, exp, int(step), sha)
    return refs


def steps(project: Path, exp: str) -> list[int]:
    return sorted(r.step for r in checkpoint_refs(project).values() if r.exp == exp)


def cache_object(project: Path, md5: str) -> Path:
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def locked_model(project: Path, commit: str) -> tuple[str, int]:
    """``(md5, size)`` that the commit's dvc.lock records for model.pt."""
    lock = yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=project).stdout)
    for out in lock["stages"]["train"]["outs"]:
        if out["path"] == "model.pt":
            return out["md5"], int(out["size"])
    raise AssertionError(f"dvc.lock of {commit} records no model.pt")


def independent_problems(project: Path) -> list[str]:
    """What is wrong with the checkpoint refs, found without expckpt's code."""
    problems = []
    for ref in checkpoint_refs(project).values():
        if TEMP_MARK in ref.ref:
            problems.append(f"{ref.ref}: a temp file's name became a ref")
        kind = run("git", "cat-file", "-t", ref.commit, cwd=project, check=False).stdout.strip()
        if kind != "commit":
            problems.append(f"{ref.name}: {ref.commit} is not a commit ({kind or 'missing'})")
            continue
        paths = run("git", "ls-tree", "-r", "--name-only", ref.commit, cwd=project).stdout.split()
        problems += [f"{ref.name}: commits temp file {p}" for p in paths if TEMP_MARK in p]
        md5, size = locked_model(project, ref.commit)
        obj = cache_object(project, md5)
        if not obj.is_file():
            problems.append(f"{ref.name}: cache object {md5} is missing")
            continue
        data = obj.read_bytes()
        if hashlib.md5(data).hexdigest() != md5 or len(data) != size:
            problems.append(f"{ref.name}: cache object {md5} does not hash to its name")
    return problems


def check_consistent(project: Path) -> dict[str, Ref]:
    """Assert the crash invariants; return the checkpoint refs."""
    refs = checkpoint_refs(project)
    assert independent_problems(project) == []
    verified = cli(project, "verify", "--all")
    assert verified.returncode == 0, verified.stderr
    assert f"{len(refs)} of {len(refs)} checkpoints verified" in verified.stdout
    listed = cli(project, "list", "-A", "--json")
    assert listed.returncode == 0, listed.stderr
    names = [row["name"] for row in json.loads(listed.stdout)]
    assert not [n for n in names if TEMP_MARK in n]
    assert sorted(names) == sorted(refs), "expckpt list and the refs disagree"
    return refs


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftover_temps(project: Path) -> list[Path]:
    return [p for p in project.rglob(f"*{TEMP_MARK}*") if ".git" not in p.parts]


# -- training output and weights -----------------------------------------------------------------
def resumed_from(stdout: str) -> tuple[str | None, int]:
    """``(checkpoint name or None, next step)`` of a train.py run (``(None, 0)``: fresh start)."""
    match = RESUMED.search(stdout)
    if match:
        return match["name"], int(match["done"])
    done = re.search(r"model\.pt already has (\d+) steps", stdout)
    return None, int(done.group(1)) if done else 0


def first_epoch(stdout: str) -> int | None:
    match = EPOCH.search(stdout)
    return int(match["n"]) if match else None


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_state(a: Path, b: Path) -> list[str]:
    """Differences between the model and optimizer tensors of two checkpoint files."""
    sa, sb = load_state(a), load_state(b)
    diffs = []
    if sa["step"] != sb["step"]:
        diffs.append(f"step {sa['step']} != {sb['step']}")
    if sa["model"].keys() != sb["model"].keys():
        return [*diffs, "different parameter names"]
    diffs += [f"model {k}" for k in sa["model"] if not torch.equal(sa["model"][k], sb["model"][k])]
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    for index in oa:
        for name, value in oa[index].items():
            if not torch.equal(torch.as_tensor(value), torch.as_tensor(ob[index][name])):
                diffs.append(f"optimizer {index}.{name}")
    return diffs


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
            args, cwd=cwd, env={**os.environ, **FAST, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=group,
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
