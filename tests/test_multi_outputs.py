"""Several checkpoint outputs in one stage, and directory outputs (issue #12, "More than one file").

End to end through real ``dvc``, ``git`` and ``expckpt``: a stage with ``model.pt`` + ``ema.pt``
publishes both in one ref per step; a ``ckpt/`` directory output is cached as DVC's ``.dir``
manifest plus one object per file, checked out by ``dvc exp apply``, moved by ``dvc exp
push/pull``, verified file by file, resumed exactly; a frozen backbone is stored once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run
from expckpt.store.cache import DvcCache
from expckpt.serialize.dirout import hash_dir
from expckpt.store.gitstore import GitStore
from expckpt.store.records import load_records

TRAIN = """
import json
from collections import OrderedDict
import torch, yaml
from expckpt import CheckpointLive, TrainingState

params = yaml.safe_load(open("params.yaml"))
w = params["width"]
torch.manual_seed(0)
model = torch.nn.Sequential(OrderedDict(backbone=torch.nn.Linear(w, w), head=torch.nn.Linear(w, 4)))
model.backbone.requires_grad_(False)
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
state = TrainingState(model=model, optimizer=opt)
ema = torch.nn.Linear(w, 4)
states = {"model.pt": state, "ema.pt": TrainingState(ema=ema)} if params["mode"] == "multi" else state
with CheckpointLive.from_env(states, params) as live:
    for step in live.steps(params["epochs"]):
        loss = model(torch.randn(8, w)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.head.parameters()):
                e.mul_(0.9).add_(p, alpha=0.1)
        live.log_metric("loss", loss.item())
        live.next_step()
"""


def toy_project(path: Path, mode: str, outs: list[str], *, width: int = 64, epochs: int = 4) -> Path:
    """A Git + DVC repo with a tiny frozen-backbone training stage and the given checkpoint outs."""
    path.mkdir(parents=True)
    (path / "train.py").write_text(TRAIN)
    (path / "params.yaml").write_text(
        yaml.safe_dump({"epochs": epochs, "width": width, "mode": mode, "checkpoint": {"every": 1}})
    )
    stage = {
        "cmd": "python train.py",
        "deps": ["train.py"],
        "params": ["epochs", "width", "mode"],
        "outs": [{o: {"checkpoint": True, "persist": True}} for o in outs],
        "always_changed": True,
    }
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}, sort_keys=False))
    run("git", "init", "-q", cwd=path)
    run("dvc", "init", "-q", cwd=path)
    run("dvc", "config", "core.autostage", "false", cwd=path)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "toy", cwd=path)
    return path


def records_by_name(proj: Path) -> dict:
    return {r.name: r for r in load_records(GitStore.open(proj))}


def locked_outs(proj: Path, commit: str) -> dict[str, dict]:
    lock = yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=proj).stdout)
    return {o["path"].rstrip("/"): o for o in lock["stages"]["train"]["outs"]}


def same_values(x: object, y: object) -> bool:
    """Equal types, key order, values and tensors (a resumed run's pickles may share objects
    differently, so its bytes can differ where its values do not)."""
    if type(x) is not type(y):
        return False
    if isinstance(x, dict):
        return list(x) == list(y) and all(same_values(x[k], y[k]) for k in x)  # type: ignore[index]
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same_values(a, b) for a, b in zip(x, y))  # type: ignore[arg-type]
    if isinstance(x, torch.Tensor):
        return x.dtype == y.dtype and torch.equal(x, y)  # type: ignore[arg-type]
    return x == y


def same_checkpoint(cache: DvcCache, a: str, b: str) -> bool:
    """Whether two cached checkpoint objects (files or ``.dir`` directories) hold the same state."""
    load = lambda m: torch.load(cache.object_path(m), weights_only=True)  # noqa: E731
    if not a.endswith(".dir"):
        return same_values(load(a), load(b))
    files_a, files_b = cache.manifest(a), cache.manifest(b)
    return list(files_a) == list(files_b) and all(same_values(load(files_a[f]), load(files_b[f])) for f in files_a)


def md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_outputs_publish_one_ref_per_step_apply_both_and_resume_exactly(tmp_path: Path) -> None:
    proj = toy_project(tmp_path / "p", "multi", ["model.pt", "ema.pt"])
    run("dvc", "exp", "run", "-n", "full", cwd=proj)
    recs = records_by_name(proj)
    assert [f"full@{k}" in recs for k in range(4)] == [True] * 4
    for k in range(4):
        rec = recs[f"full@{k}"]
        assert set(rec.outs) == {"model.pt", "ema.pt"}
        locked = locked_outs(proj, rec.commit)
        assert {p: locked[p]["md5"] for p in rec.outs} == {p: o.md5 for p, o in rec.outs.items()}
    assert recs["full@1"].outs["ema.pt"].md5 != recs["full@2"].outs["ema.pt"].md5  # both move each step

    run("dvc", "exp", "apply", "full@1", cwd=proj)
    assert {p: md5(proj / p) for p in ("model.pt", "ema.pt")} == {p: o.md5 for p, o in recs["full@1"].outs.items()}

    out = run("dvc", "exp", "run", "-n", "again", cwd=proj)
    assert "Resuming from model.pt, ema.pt (full@1): 2 steps done" in out.stdout
    recs = records_by_name(proj)
    assert "again@1" not in recs and recs["again@2"].parent == recs["full@1"].commit
    cache = DvcCache.for_project(proj, proj / ".git")
    for path in ("model.pt", "ema.pt"):  # exactly the state of the uninterrupted run
        assert same_checkpoint(cache, recs["again@3"].outs[path].md5, recs["full@3"].outs[path].md5)
    assert recs["again@3"].outs["ema.pt"] == recs["full@3"].outs["ema.pt"]  # tensors only: same bytes


@pytest.mark.slow
def test_directory_output_dvc_exp_run_apply_push_pull_verify_and_exact_resume(tmp_path: Path) -> None:
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"], width=256)
    # the DVC remote is committed before the run: `dvc exp push` reads it from the experiment's commit
    run("git", "init", "-q", "--bare", str(tmp_path / "origin.git"), cwd=tmp_path)
    run("git", "remote", "add", "origin", str(tmp_path / "origin.git"), cwd=proj)
    run("dvc", "remote", "add", "-d", "store", str(tmp_path / "store"), cwd=proj)
    run("git", "commit", "-qam", "remote", cwd=proj)
    run("git", "push", "-q", "origin", "HEAD:main", cwd=proj)
    run("dvc", "exp", "run", "-n", "full", cwd=proj)
    recs = records_by_name(proj)
    cache = DvcCache.for_project(proj, proj / ".git")
    for k in range(4):
        rec = recs[f"full@{k}"]
        locked = locked_outs(proj, rec.commit)["ckpt"]
        assert locked["md5"] == rec.outs["ckpt"].md5 and locked["md5"].endswith(".dir")
        assert locked["nfiles"] == rec.outs["ckpt"].nfiles == 2  # expckpt.pt and model/backbone.pt
        h = locked["md5"]
        assert (proj / ".dvc" / "cache" / "files" / "md5" / h[:2] / h[2:]).is_file()
        assert cache.has(h)
    # dvc exp run's own commit at the end records the very directory of the last checkpoint
    tip = run("git", "for-each-ref", "--format=%(objectname)", "refs/exps/*/*/full", cwd=proj).stdout.strip()
    assert locked_outs(proj, tip)["ckpt"] == locked_outs(proj, recs["full@3"].commit)["ckpt"]
    # the frozen backbone is one object shared by every checkpoint
    manifests = [cache.manifest(recs[f"full@{k}"].outs["ckpt"].md5) for k in range(4)]
    assert len({m["model/backbone.pt"] for m in manifests}) == 1
    assert len({m["expckpt.pt"] for m in manifests}) == 4

    # dvc exp apply checks the directory out; a stray file in it is removed
    (proj / "ckpt" / "stray.pt").write_bytes(b"x")
    run("dvc", "exp", "apply", "full@1", cwd=proj)
    assert hash_dir(proj / "ckpt")[0] == recs["full@1"].outs["ckpt"].md5

    out = run("dvc", "exp", "run", "-n", "again", cwd=proj)
    assert "Resuming from ckpt (full@1): 2 steps done" in out.stdout
    recs = records_by_name(proj)
    again, full = recs["again@3"].outs["ckpt"].md5, recs["full@3"].outs["ckpt"].md5
    assert same_checkpoint(cache, again, full)  # exactly the state of the uninterrupted run
    assert cache.manifest(again)["model/backbone.pt"] == cache.manifest(full)["model/backbone.pt"]
    assert run("expckpt", "verify", "--all", cwd=proj).returncode == 0

    # dvc exp push / pull move the manifest and every file
    run("dvc", "exp", "push", "origin", "full@2", cwd=proj)
    stored = {f.parent.name + f.name for f in (tmp_path / "store" / "files" / "md5").glob("*/*")}
    assert cache.expand(recs["full@2"].outs["ckpt"].md5) <= stored
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(tmp_path / "origin.git"), str(clone), cwd=tmp_path)
    run("dvc", "exp", "pull", "origin", "full@2", cwd=clone)
    run("dvc", "exp", "apply", "full@2", cwd=clone)
    assert hash_dir(clone / "ckpt")[0] == recs["full@2"].outs["ckpt"].md5

    # a corrupted file inside a cached directory is caught, and named
    head = cache.manifest(recs["full@2"].outs["ckpt"].md5)["expckpt.pt"]
    obj = cache.object_path(head)
    os.chmod(obj, 0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"!")
    bad = run("expckpt", "verify", "--all", cwd=proj, check=False)
    assert bad.returncode == 1
    assert "full@2" in bad.stderr and "expckpt.pt" in bad.stderr and "corrupt" in bad.stderr


@pytest.mark.slow
def test_frozen_backbone_stores_only_the_changed_files(tmp_path: Path) -> None:
    """New bytes in the cache per checkpoint: expckpt.pt (head, optimizer, step, RNG), not the backbone."""
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"], width=512, epochs=4)
    run("dvc", "exp", "run", "-n", "f", cwd=proj)
    recs = records_by_name(proj)
    cache = DvcCache.for_project(proj, proj / ".git")
    seen: set[str] = set()
    new_bytes = []
    for k in range(4):
        objects = cache.expand(recs[f"f@{k}"].outs["ckpt"].md5)
        new_bytes.append(sum(cache.object_path(o).stat().st_size for o in objects - seen))
        seen |= objects
    total = recs["f@3"].outs["ckpt"].size
    backbone = (proj / "ckpt" / "model" / "backbone.pt").stat().st_size
    assert backbone > 0.9 * total  # the model is mostly frozen
    assert new_bytes[0] > backbone
    assert all(b < total - backbone + 4096 for b in new_bytes[1:]), (new_bytes, total, backbone)
    assert all(b * 5 <= total for b in new_bytes[1:])  # >= 5x fewer new bytes than a whole checkpoint
