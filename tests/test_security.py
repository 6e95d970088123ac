"""Security: a checkpoint never runs code, a hostile experiment name never becomes a ref outside
``refs/exps``, and expckpt never hands a string to a shell (issue: crash-safe, tamper-safe
checkpoints)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from expckpt import load_checkpoint, load_model
from expckpt.errors import InvalidNameError, UnsafeCheckpointError
from expckpt.store.project import RunContext
from faultkit import FAST, checkpoint_refs, dvc_env, run, snapshot, train, trained

PACKAGE = Path(__file__).resolve().parent.parent / "expckpt"


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft(path: Path, marker: Path) -> None:
    """A checkpoint-shaped file whose model entry is a hostile pickle."""
    torch.save({"format": "expckpt/1", "step": 0, "model": _Payload(marker)}, path)


@pytest.mark.slow
def test_the_crafted_file_really_runs_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """Sanity check of the weapon (in a throw-away process): plain unpickling creates the marker."""
    marker = tmp_path / "pwned-by-unsafe-load"
    craft(tmp_path / "evil.pt", marker)
    code = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "evil.pt")], check=False, capture_output=True)
    assert marker.exists()


def test_load_checkpoint_refuses_a_crafted_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    craft(evil, marker)

    with pytest.raises(UnsafeCheckpointError, match="would run code when loaded, so it was refused"):
        load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError):
        load_model(evil, torch.nn.Linear(2, 2))
    assert not marker.exists()


@pytest.mark.slow
def test_training_refuses_a_crafted_model_pt(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The resume path of train.py inside a checkpoint experiment: refused, one line, nothing run."""
    project = trained(tmp_path_factory, tmp_path / "p")
    before = snapshot(project)
    marker = tmp_path / "pwned"
    (project / "model.pt").unlink()
    craft(project / "model.pt", marker)

    result = train(project, "straight", check=False)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), result.stderr
    assert "would run code when loaded, so it was refused" in lines[0]
    assert not marker.exists()
    assert snapshot(project) == before


@pytest.mark.parametrize(
    "name",
    [
        "a/../../b",
        "../../x",
        "..",
        "refs/heads/main",
        "x@1",
        "-rf",
        "a b",
        "x.lock",
        "a..b",
        "~x",
        "a:b",
        "$(touch pwned)",
        "x\nrefs/heads/y",
        ".hidden",
        "é",
        "a" * 101,
        "",
    ],
)
def test_hostile_experiment_names_are_refused(name: str) -> None:
    env = {"DVC_EXP_NAME": name, "DVC_EXP_BASELINE_REV": "0" * 40, "DVC_ROOT": "/nonexistent"}
    if name == "":
        assert RunContext.from_env(env) is None  # no name: not a dvc exp run at all
        return
    with pytest.raises(InvalidNameError, match="cannot be used for checkpoints"):
        RunContext.from_env(env)


@pytest.mark.slow
def test_train_py_with_a_hostile_name_creates_no_ref(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    project = trained(tmp_path_factory, tmp_path / "p")
    refs_before = run("git", "for-each-ref", cwd=project).stdout
    files_before = sorted(p.relative_to(project) for p in (project / ".git").rglob("*"))

    result = run("python", "train.py", cwd=project, check=False, env={**FAST, **dvc_env(project, "a/../../b")})

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "train.py: error: experiment name 'a/../../b' cannot be used for checkpoints: use 1-100 letters,"
        " digits, '.', '_' or '-', starting with a letter or digit (e.g. 'tut' or 'lr-0.01')"
    ]
    assert run("git", "for-each-ref", cwd=project).stdout == refs_before
    assert sorted(p.relative_to(project) for p in (project / ".git").rglob("*")) == files_before
    assert not (tmp_path / "b").exists() and not (project / "b").exists()


@pytest.mark.slow
def test_dvc_itself_refuses_a_path_like_name(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    project = trained(tmp_path_factory, tmp_path / "p")
    before = checkpoint_refs(project)

    result = run("dvc", "exp", "run", "-n", "../../x", cwd=project, check=False)

    assert result.returncode != 0 and "Invalid exp name ../../x" in result.stderr
    assert checkpoint_refs(project) == before


def _python_sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    return files


def test_no_shell_strings_in_expckpt() -> None:
    """Commands are argument lists: no shell=True, os.system or os.popen anywhere in the package."""
    offenders = []
    for path in _python_sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"shell\s*=\s*True|\bos\.system\s*\(|\bos\.popen\s*\(", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_every_torch_load_is_weights_only() -> None:
    """No torch.load without weights_only=True, and no pickle loading at all, in the package."""
    offenders = []
    for path in _python_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            if func in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
                offenders.append(f"{path.name}:{node.lineno}: {func}")
            if func.endswith("torch.load"):
                safe = [k for k in node.keywords if k.arg == "weights_only" and isinstance(k.value, ast.Constant)]
                if not (safe and safe[0].value.value is True):
                    offenders.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
        if re.search(r"from torch(\.serialization)? import .*\bload\b", path.read_text()):
            offenders.append(f"{path.name}: imports torch's load under another name")
    assert offenders == []
