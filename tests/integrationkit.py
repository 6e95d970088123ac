"""Helpers for the framework integration tests: a project made from an ``examples/<name>`` folder,
its checkpoint refs, the payload of a checkpoint, and a ``dvc exp run`` killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from conftest import REPO, kill_group, run

EXAMPLES = REPO / "examples"


def make_example_project(path: Path, example: str, **params: Any) -> Path:
    """A committed Git + DVC repo holding ``examples/<example>``, with ``params`` overridden."""
    shutil.copytree(EXAMPLES / example, path, ignore=shutil.ignore_patterns("__pycache__", "dvclive", "model.pt"))
    values = yaml.safe_load((path / "params.yaml").read_text())
    values.update(params)
    (path / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    run("dvc", "config", "core.autostage", "false", cwd=path)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", f"{example} example", cwd=path)
    return path


def baseline(project: Path) -> str:
    return run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()


def checkpoint_refs(project: Path, base: str, exp: str) -> dict[int, str]:
    """step -> commit of the checkpoints ``<exp>@<step>`` of baseline ``base``."""
    prefix = f"refs/exps/{base[:2]}/{base[2:]}/"
    out = run("git", "for-each-ref", "--format=%(refname) %(objectname)", prefix, cwd=project).stdout
    found = {}
    for line in out.splitlines():
        ref, sha = line.split()
        name, at, step = ref[len(prefix) :].rpartition("@")
        if at and name == exp and step.isdigit():
            found[int(step)] = sha
    return dict(sorted(found.items()))


def meta(project: Path, commit: str) -> dict[str, Any]:
    """The ``expckpt-meta:`` JSON line of a checkpoint commit's message."""
    message = run("git", "show", "-s", "--format=%B", commit, cwd=project).stdout
    (line,) = [line for line in message.splitlines() if line.startswith("expckpt-meta: ")]
    return json.loads(line[len("expckpt-meta: ") :])


def lineage(project: Path, commit: str) -> dict[int, str]:
    """step -> commit along the ``parent`` links of checkpoint ``commit`` (removed refs too)."""
    chain = {}
    while commit:
        record = meta(project, commit)
        chain[record["step"]] = commit
        commit = record["parent"]
    return dict(sorted(chain.items()))


def show_json(project: Path, commit: str, path: str) -> Any:
    return json.loads(run("git", "show", f"{commit}:{path}", cwd=project).stdout)


def payload(project: Path, commit: str, path: str = "model.pt") -> dict[str, Any]:
    """The checkpoint file of ``commit``, read from the DVC cache via the commit's dvc.lock."""
    lock = yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=project).stdout)
    (md5,) = [o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", []) if o["path"] == path]
    obj = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert obj.is_file(), f"{commit[:7]}: {path} object {md5} is not in the cache"
    return torch.load(obj, map_location="cpu", weights_only=True)


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of two checkpoint payloads (tensors by ``torch.equal``)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def training_state(p: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a resume to be exact (not the dvclive history or best-so-far)."""
    return {k: p.get(k) for k in ("step", "model", "optimizer", "scheduler", "scaler", "rng")}


def _start_exp_run(project: Path, exp: str, args: tuple[str, ...]) -> subprocess.Popen:
    """``dvc exp run -n exp ARGS`` in its own process group (so a kill reaches every process)."""
    return subprocess.Popen(
        ["dvc", "exp", "run", "-n", exp, *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_and_kill(project: Path, base: str, exp: str, *args: str, after_step: int = 1, timeout: float = 300) -> str:
    """``dvc exp run -n exp ARGS``, killed (whole process group, SIGKILL) once ``exp@after_step``
    exists; returns its output."""
    proc = _start_exp_run(project, exp, args)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if after_step in checkpoint_refs(project, base, exp):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"  # type: ignore[union-attr]
        kill_group(proc.pid)
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
        output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output
    # DVC leaves HEAD detached at the baseline when killed; go back to the branch as a user would
    run("git", "checkout", "-q", "main", cwd=project)
    return output


def _rank_pid(exp: str, rank: int, project: Path) -> int | None:
    """The pid of torchrun worker ``rank`` of the ``dvc exp run -n exp`` under way in ``project``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        mine = f"DVC_EXP_NAME={exp}".encode() in environ and f"DVC_ROOT={project}".encode() in environ
        if mine and f"RANK={rank}".encode() in environ:
            if b"train.py" in (entry / "cmdline").read_bytes():
                return int(entry.name)
    return None


def run_and_kill_rank(
    project: Path, base: str, exp: str, *args: str, rank: int, after_step: int = 1, timeout: float = 300
) -> str:
    """``dvc exp run -n exp ARGS`` of a torchrun stage, with worker ``rank`` killed by SIGKILL
    once ``exp@after_step`` exists; torchrun then stops the other ranks and the run fails."""
    proc = _start_exp_run(project, exp, args)
    try:
        deadline = time.monotonic() + timeout
        victim = None
        while proc.poll() is None and time.monotonic() < deadline and victim is None:
            if after_step in checkpoint_refs(project, base, exp):
                victim = _rank_pid(exp, rank, project)
            time.sleep(0.05)
        assert victim is not None, f"no rank {rank} to kill:\n{proc.communicate()[0]}"
        os.kill(victim, signal.SIGKILL)
        output = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
            proc.communicate()
    assert proc.returncode not in (0, None), output
    # torchrun stops the other ranks and DVC cleans up after the failed run; a git process
    # started by either may still hold the index lock for a moment after `dvc` returns
    lock = project / ".git" / "index.lock"
    deadline = time.monotonic() + 30
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not lock.exists(), f"{lock} left behind after the killed run:\n{output}"
    run("git", "checkout", "-q", "main", cwd=project)
    return output
