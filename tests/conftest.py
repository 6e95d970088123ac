"""Shared fixtures: every test runs with an isolated HOME, Git identity and no DVC analytics.

``project`` builds a real Git + DVC repository holding the example pipeline (small, few
epochs); ``sh`` runs real commands in it (``dvc``, ``expckpt``, ``git``, ``python``) from this
virtualenv, with argument lists only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLE_FILES = ("train.py", "download.py", "mnist.py", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore")


@pytest.fixture(scope="session", autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate_env(tmp_path_factory.mktemp("home"), monkeypatch)
        yield


def _isolate_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / ".gitconfig").write_text(
        "[user]\n\tname = expckpt tests\n\temail = tests@expckpt.invalid\n"
        '[init]\n\tdefaultBranch = main\n[protocol "file"]\n\tallow = always\n'
    )
    for key in list(os.environ):
        if key.startswith(("DVC_", "DVCLIVE_", "GIT_", "EXPCKPT_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(home / ".dvc-site-cache"))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


Runner = Callable[..., subprocess.CompletedProcess]


def run(
    *args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def make_project(path: Path, **params: object) -> Path:
    """A committed Git + DVC repo holding the example pipeline, with ``params`` overridden."""
    path.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLE_FILES:
        shutil.copy(REPO / name, path / name)
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in params.items():
        if key == "checkpoint" and isinstance(value, dict):
            values["checkpoint"] = value
        else:
            values[key] = value
    (path / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    run("dvc", "config", "core.autostage", "false", cwd=path)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "example project", cwd=path)
    return path


@pytest.fixture
def sh() -> Callable[..., subprocess.CompletedProcess]:
    return run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example project with 3 epochs."""
    return make_project(tmp_path / "project", epochs=3)


def train_in_exp_env(
    project: Path, name: str, *args: str, check: bool = True, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run train.py as ``dvc exp run`` would (same variables), without DVC's start-up cost.

    Fast checkpoints for tests that are about what happens to them afterwards; the real
    ``dvc exp run`` path is covered by the end-to-end tests.
    """
    if not (project / "data").is_dir():
        run("python", "download.py", cwd=project)
    head = run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    env = {
        "DVC_ROOT": str(project),
        "DVC_EXP_NAME": name,
        "DVC_EXP_BASELINE_REV": head,
        "DVC_STAGE": "train",
        **(extra_env or {}),
    }
    return run("python", "train.py", *args, cwd=project, env=env, check=check)


def kill_group(pgid: int, timeout: float = 60) -> None:
    """SIGKILL process group ``pgid`` and wait until its processes are gone (reaped), as they are
    when a user's next command starts: DVC's locks still name a process that lingers as a zombie."""
    import signal
    import time

    def members() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # state, ppid, pgrp
                found.append(int(stat.parent.name))
        return found

    pids = members()
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
