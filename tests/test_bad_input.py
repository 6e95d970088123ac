"""Bad input: each case fails with one clear line on stderr and a non-zero exit, and loses
nothing (the previous good checkpoint's refs, cache objects, note and dvc.lock are untouched).
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from expckpt import TrainingState
from expckpt.faults import PAUSE_MESSAGE
from faultkit import (
    EPOCHS,
    Background,
    check_consistent,
    checkpoint_refs,
    cli,
    clone,
    dvc_env,
    dvc_exp_run,
    leftover_temps,
    locked_model,
    md5_of,
    resumed_from,
    run,
    set_param,
    snapshot,
    train,
    trained,
)


def error_lines(stderr: str, prefix: str = "train.py: error: ") -> list[str]:
    """The lines of ``stderr`` that start with ``prefix``; there must be no traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def only_line(stderr: str, prefix: str = "train.py: error: ") -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    return lines[0]


def replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` as a new file, as ``mv`` or an editor's save would.

    model.pt shares its inode with the newest checkpoint's (read-only) cache object; writing
    into it in place, as root may, would change that object too (``expckpt verify`` reports it).
    """
    path.unlink(missing_ok=True)
    path.write_bytes(data)


@pytest.fixture
def good(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A project whose checkpoints straight@0..2 are complete."""
    return trained(tmp_path_factory, tmp_path / "p")


@pytest.mark.slow
def test_model_pt_truncated_in_place_then_dvc_exp_run(good: Path) -> None:
    """model.pt cut short where it lies (``cp x model.pt``, ``torch.save(..., "model.pt")`` as
    root): DVC cannot check out a good copy, train.py refuses the file in one line, and the other
    checkpoints stay intact.

    model.pt is a hard link to the newest checkpoint's read-only cache object, so an in-place
    write (only root gets past the permissions) damages that checkpoint too; ``expckpt verify``
    names it, and only it.
    """
    before = checkpoint_refs(good)
    model = good / "model.pt"
    model.chmod(0o644)
    with open(model, "r+b") as handle:
        handle.truncate(model.stat().st_size // 2)
    set_param(good, "epochs", EPOCHS + 1)

    result = dvc_exp_run(good, "-n", "again", check=False)

    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "model.pt is truncated or corrupt" in lines[0] and "expckpt reset" in lines[0]
    assert checkpoint_refs(good) == before
    broken = cli(good, "verify", "--all")
    assert [line.split(" (")[0] for line in broken.stderr.splitlines()] in ([], [f"expckpt: straight@{EPOCHS - 1}"])


@pytest.mark.slow
def test_truncated_model_pt_is_refused_not_replaced(good: Path) -> None:
    """A damaged file is not silently swapped for a checkpoint: the user is told how to restore."""
    before = snapshot(good)
    model = good / "model.pt"
    replace(model, model.read_bytes()[:1000])

    result = train(good, "straight", check=False)

    assert result.returncode == 1
    line = only_line(result.stderr)
    assert "model.pt is truncated or corrupt" in line and "dvc exp apply <exp>@<step>" in line
    assert snapshot(good) == before
    assert check_consistent(good).keys() == {f"straight@{i}" for i in range(EPOCHS)}


@pytest.mark.slow
def test_checkpoint_of_another_architecture(good: Path) -> None:
    before = snapshot(good)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    state = TrainingState(model=other, optimizer=torch.optim.Adam(other.parameters()))
    state.step = 5
    (good / "model.pt").unlink()
    torch.save(state.capture(), good / "model.pt")

    result = train(good, "straight", check=False)

    assert result.returncode == 1
    line = only_line(result.stderr)
    assert "model.pt was saved from a different model architecture" in line
    assert "missing conv1.bias" in line and "expckpt reset" in line
    assert snapshot(good) == before


@pytest.mark.slow
def test_unknown_checkpoint_name_suggests_close_ones(good: Path) -> None:
    result = run("expckpt", "list", "straigt9", cwd=good, check=False)

    assert result.returncode == 1
    line = only_line(result.stderr, "expckpt: error: ")
    assert line.startswith("expckpt: error: no checkpoint named 'straigt9'; did you mean 'straight'")


@pytest.mark.slow
def test_show_outside_a_git_repository(tmp_path: Path) -> None:
    result = run("expckpt", "show", cwd=tmp_path, check=False)

    assert result.returncode == 1
    line = only_line(result.stderr, "expckpt: error: ")
    assert "is not inside a Git repository" in line and "git init && dvc init" in line


@pytest.mark.slow
def test_show_in_a_git_repository_without_dvc(tmp_path: Path) -> None:
    run("git", "init", "-q", cwd=tmp_path)

    result = run("expckpt", "show", cwd=tmp_path, check=False)

    assert result.returncode == 1
    line = only_line(result.stderr, "expckpt: error: ")
    assert "is not a DVC project" in line and "dvc init" in line


@pytest.mark.slow
def test_dvc_yaml_without_checkpoint_output(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    project = clone(tmp_path_factory, tmp_path / "p")
    dvc_yaml = project / "dvc.yaml"
    spec = yaml.safe_load(dvc_yaml.read_text())
    spec["stages"]["train"]["outs"] = [{"model.pt": {"persist": True}}]
    dvc_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    run("git", "commit", "-qam", "no checkpoint output", cwd=project)

    result = dvc_exp_run(project, "-n", "nock", check=False)

    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "dvc.yaml has no output with `checkpoint: true` in stage 'train'" in lines[0]
    assert "model.pt: {checkpoint: true, persist: true}" in lines[0]
    assert checkpoint_refs(project) == {}


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(good: Path) -> None:
    """The file system runs out of room between two checkpoints.

    Honestly, without root mounts: once checkpoint ``straight@3`` is complete (the process is
    paused there by ``EXPCKPT_PAUSE_AT``), the test lowers the running process's
    ``RLIMIT_FSIZE`` below a checkpoint's size, so the kernel fails the write of the next one
    with EFBIG, as it fails writes on a full disk with ENOSPC. (A limit set from the start
    would hit DVC's own SQLite files first.)
    """
    set_param(good, "epochs", EPOCHS + 2)
    size = (good / "model.pt").stat().st_size
    env = {**dvc_env(good, "straight"), "EXPCKPT_PAUSE_AT": f"after-ref:{EPOCHS}", "EXPCKPT_PAUSE_SECONDS": "3"}
    bg = Background.start(["python", "train.py"], good, env)
    bg.wait_for(PAUSE_MESSAGE)
    resource.prlimit(bg.proc.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))
    at_pause = snapshot(good)

    code = bg.wait()

    assert code == 1, bg.stderr
    line = only_line("\n".join(x for x in bg.stderr.splitlines() if not x.startswith(PAUSE_MESSAGE)))
    assert "file too large" in line and "model.pt" in line and "the previous checkpoint is intact" in line
    after = snapshot(good)
    assert (after["refs"], after["objects"]) == (at_pause["refs"], at_pause["objects"])
    last = checkpoint_refs(good)[f"straight@{EPOCHS}"]
    md5, _ = locked_model(good, last.commit)
    assert md5_of(good / "model.pt") == md5, "model.pt is still the last complete checkpoint"
    assert json.loads(after["note"])["commit"] == last.commit
    assert md5 in after["dvc.lock"]
    assert not leftover_temps(good), "the partial temp file is removed"
    check_consistent(good)

    again = train(good, "straight")  # room again: goes on from the last complete checkpoint

    assert resumed_from(again.stdout) == (f"straight@{EPOCHS}", EPOCHS + 1)
    assert f"Checkpoint experiment 'straight@{EPOCHS + 1}'" in again.stdout
    check_consistent(good)


@pytest.mark.slow
def test_missing_params_key_names_it(good: Path) -> None:
    before = snapshot(good)
    params = good / "params.yaml"
    params.write_text("\n".join(line for line in params.read_text().splitlines() if not line.startswith("epochs:")))

    result = train(good, "straight", check=False)

    assert result.returncode == 1
    assert only_line(result.stderr) == (
        "train.py: error: params.yaml has no key 'epochs'; add it at the top level (e.g. `epochs: ...`)"
    )
    assert snapshot(good) == before
