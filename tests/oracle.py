"""The crash-safety oracle: what must hold after any crash, checked one way everywhere.

Used by tests/test_faults.py, tests/test_signals.py, tests/test_workflow.py and
bench/crash_trials.py (which puts this directory on ``sys.path``), so it imports neither pytest
nor conftest. After a crash:

1. **intact**: every checkpoint ref names a commit whose dvc.lock names a model.pt object that
   is in the DVC cache and hashes to its name and size. Checked twice: here, with Git plumbing,
   YAML and hashlib only, so a bug shared by expckpt's reader and writer cannot hide itself;
   and by ``expckpt verify --all``, which must say every checkpoint verified;
2. **no temp file passes for a checkpoint**: no ref, no ``expckpt list`` row and no commit
   holds a ``.expckpt-tmp-`` name, and ``expckpt list`` shows exactly the refs;
3. **resume**: the run started again goes on from the last complete checkpoint (its step + 1,
   by that checkpoint's name) and trains no completed step again;
4. **final**: it ends with model and optimizer tensors bitwise equal to an uninterrupted run's.

Each check returns a list of problems (empty: it holds); ``check_consistent`` asserts 1 and 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

TEMP_MARK = ".expckpt-tmp-"
RESUMED = re.compile(r"Resuming from model\.pt(?: \((?P<name>[^)]+)\))?: (?P<done>\d+) steps done")
ALREADY = re.compile(r"model\.pt already has (\d+) steps")
EPOCH = re.compile(r"^epoch (?P<n>\d+):", re.M)


def git(project: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"git {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# -- what the repository holds -------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    ref: str
    name: str
    exp: str
    step: int
    commit: str


def checkpoint_refs(project: Path) -> dict[str, Ref]:
    """Every ``<exp>@<step>`` ref under refs/exps, by name."""
    refs = {}
    for line in git(project, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").splitlines():
        ref, sha = line.split()
        name = ref.rsplit("/", 1)[-1]
        if "@" in name and not ref.startswith("refs/exps/exec/"):
            exp, _, step = name.rpartition("@")
            refs[name] = Ref(ref, name, exp, int(step) if step.isdigit() else -1, sha)
    return refs


def steps(project: Path, exp: str) -> list[int]:
    return sorted(r.step for r in checkpoint_refs(project).values() if r.exp == exp)


def cache_object(project: Path, md5: str) -> Path:
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def locked_model(project: Path, commit: str) -> tuple[str, int]:
    """``(md5, size)`` that the commit's dvc.lock records for model.pt."""
    lock = yaml.safe_load(git(project, "show", f"{commit}:dvc.lock"))
    for out in lock["stages"]["train"]["outs"]:
        if out["path"] == "model.pt":
            return out["md5"], int(out["size"])
    raise AssertionError(f"dvc.lock of {commit} records no model.pt")


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# -- 1 and 2: intact, and no temp file passes for a checkpoint ---------------------------------------
def independent_problems(project: Path) -> list[str]:
    """What is wrong with the checkpoint refs, found without expckpt's code."""
    problems = []
    for ref in checkpoint_refs(project).values():
        if TEMP_MARK in ref.ref or ref.step < 0:
            problems.append(f"{ref.ref}: not a checkpoint name (a temp file's name became a ref?)")
        kind = git(project, "cat-file", "-t", ref.commit, check=False).strip()
        if kind != "commit":
            problems.append(f"{ref.name}: {ref.commit} is not a commit ({kind or 'missing'})")
            continue
        paths = git(project, "ls-tree", "-r", "--name-only", ref.commit).split()
        problems += [f"{ref.name}: commits temp file {p}" for p in paths if TEMP_MARK in p]
        if "dvc.lock" not in paths:
            problems.append(f"{ref.name}: its commit has no dvc.lock")
            continue
        try:
            md5, size = locked_model(project, ref.commit)
        except (AssertionError, KeyError, TypeError, yaml.YAMLError) as exc:
            problems.append(f"{ref.name}: dvc.lock unreadable: {exc}")
            continue
        obj = cache_object(project, md5)
        if not obj.is_file():
            problems.append(f"{ref.name}: cache object {md5} is missing")
            continue
        data = obj.read_bytes()
        if hashlib.md5(data).hexdigest() != md5 or len(data) != size:
            problems.append(f"{ref.name}: cache object {md5} does not hash to its name and size")
    return problems


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(project: Path, *args: str) -> CliResult:
    """``expckpt ARGS`` run in ``project`` by the same ``main`` the console script calls (in this
    process: a subprocess would pay seconds of imports)."""
    from expckpt.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    saved = {
        k: os.environ.pop(k) for k in list(os.environ) if k.startswith("DVC_EXP") or k in ("DVC_ROOT", "DVC_STAGE")
    }
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


def expckpt_problems(project: Path, refs: dict[str, Ref]) -> list[str]:
    """What ``expckpt verify --all`` and ``expckpt list -A --json`` disagree with."""
    problems = []
    verified = cli(project, "verify", "--all")
    if verified.returncode != 0:
        problems.append(f"expckpt verify --all exited {verified.returncode}: {verified.stderr.strip()}")
    elif f"{len(refs)} of {len(refs)} checkpoints verified" not in verified.stdout:
        problems.append(f"expckpt verify --all: {verified.stdout.strip()}")
    listed = cli(project, "list", "-A", "--json")
    if listed.returncode != 0:
        return [*problems, f"expckpt list exited {listed.returncode}: {listed.stderr.strip()}"]
    names = [row["name"] for row in json.loads(listed.stdout)]
    problems += [f"expckpt list shows {n}" for n in names if TEMP_MARK in n]
    if sorted(names) != sorted(refs):
        problems.append(f"expckpt list {sorted(names)} != refs {sorted(refs)}")
    return problems


def consistency_problems(project: Path) -> list[str]:
    """Checks 1 and 2."""
    refs = checkpoint_refs(project)
    return independent_problems(project) + expckpt_problems(project, refs)


def check_consistent(project: Path) -> dict[str, Ref]:
    """Assert checks 1 and 2; return the checkpoint refs."""
    problems = consistency_problems(project)
    assert problems == [], "\n".join(problems)
    return checkpoint_refs(project)


def unbroken_problems(project: Path, exp: str) -> list[str]:
    """The checkpoints of ``exp`` are steps 0..k with no gap."""
    done = steps(project, exp)
    return [] if done == list(range(len(done))) else [f"checkpoints of {exp} are not an unbroken 0..k: {done}"]


# -- 3: resume -------------------------------------------------------------------------------------
def resumed_from(stdout: str) -> tuple[str | None, int]:
    """``(checkpoint name or None, next step)`` of a train.py run (``(None, 0)``: fresh start)."""
    match = RESUMED.search(stdout)
    if match:
        return match["name"], int(match["done"])
    done = ALREADY.search(stdout)
    return None, int(done.group(1)) if done else 0


def first_epoch(stdout: str) -> int | None:
    match = EPOCH.search(stdout)
    return int(match["n"]) if match else None


def resume_problems(stdout: str, exp: str, last_complete: int | None, total: int) -> list[str]:
    """The run printed in ``stdout`` went on from ``exp@last_complete`` (None: from scratch)."""
    name, next_step = resumed_from(stdout)
    want = 0 if last_complete is None else last_complete + 1
    if next_step != want:
        return [f"resumed at step {next_step}, expected {want} (last complete {last_complete})"]
    problems = []
    if last_complete is not None and want < total and name != f"{exp}@{last_complete}":
        problems.append(f"resumed from {name}, expected {exp}@{last_complete}")
    if want < total and first_epoch(stdout) != want:
        problems.append(
            f"first trained epoch {first_epoch(stdout)}, expected {want}: a completed step was trained again?"
        )
    return problems


# -- 4: final weights --------------------------------------------------------------------------------
def same_state(a: Path, b: Path) -> list[str]:
    """Differences between the step, model and optimizer tensors of two checkpoint files."""
    import torch

    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    diffs = [] if sa["step"] == sb["step"] else [f"step {sa['step']} != {sb['step']}"]
    if sa["model"].keys() != sb["model"].keys():
        return [*diffs, "different parameter names"]
    diffs += [f"model {k}" for k in sa["model"] if not torch.equal(sa["model"][k], sb["model"][k])]
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    if oa.keys() != ob.keys():
        return [*diffs, "different optimizer state keys"]
    for index in oa:
        for key, value in oa[index].items():
            if not torch.equal(torch.as_tensor(value), torch.as_tensor(ob[index][key])):
                diffs.append(f"optimizer {index}.{key}")
    return diffs


def final_problems(project: Path, exp: str, total: int, reference_model: Path) -> list[str]:
    """After the resumed run: ``exp``'s checkpoints are 0..total-1, all consistent, and model.pt
    equals the uninterrupted run's."""
    problems = []
    if steps(project, exp) != list(range(total)):
        problems.append(f"after resuming, {exp}'s checkpoints are {steps(project, exp)}, not 0..{total - 1}")
    problems += consistency_problems(project)
    problems += [f"differs from the uninterrupted run: {d}" for d in same_state(project / "model.pt", reference_model)]
    return problems
