"""Sharded state through ``torch.distributed.checkpoint``: ``examples/dcp`` (FSDP2 on 2 CPU ranks,
gloo) under the real ``dvc exp run``, with ``ckpt/`` a directory checkpoint output.

First, without DVC: two gloo ranks save, then one process loads what they wrote (another world
size: DCP reshards). Then one project per module; the tests run in order: a first run (each
epoch a directory checkpoint with metrics), apply a checkpoint and branch off it (exact), SIGKILL
of rank 1 and resume (bitwise equal to the uninterrupted run), verify.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from conftest import run
from expckpt.store.cache import DvcCache
from expckpt.integrations.dcp import STEP_KEY, SafeLoadPlanner, rng_key
from integrationkit import (
    baseline,
    checkpoint_refs,
    lineage,
    make_example_project,
    meta,
    run_and_kill_rank,
    same,
    show_json,
)

EPOCHS = 5
CHECKPOINT = {"every": 1, "monitor": "acc", "mode": "max"}
CHECKPOINT_LINE = re.compile(r"^Checkpoint experiment '([^']+)'", re.M)
DCP_FILES = {".metadata", "__0_0.distcp", "__1_0.distcp"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _ranks(rank: int, tmp: str) -> None:
    """One of two gloo ranks: FSDP2-shards a model, trains and saves 2 steps, writes what it has."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from expckpt.errors import ConfigError, ExpCkptError
    from expckpt import Checkpointer
    from expckpt.integrations.dcp import DcpHandler

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
    try:
        model = _model()
        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        checkpointer = Checkpointer.from_env(f"{tmp}/ckpt/", {"every": 1}, handler=DcpHandler)
        assert checkpointer.restore({"model": get_model_state_dict(model)}) is None
        torch.manual_seed(10 + rank)
        for step in (0, 1):
            model(torch.randn(4, 6)).sum().backward()
            optimizer.step()
            decision = checkpointer.save({"model": get_model_state_dict(model)}, step, {"loss": 1.0})
            assert decision.saved and decision.stop is None
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        torch.save({"model": full, "rng": torch.get_rng_state()}, f"{tmp}/rank{rank}.pt")
        seen = {}
        try:
            checkpointer.save({"model": get_model_state_dict(model)}, 2 + rank, {})
        except ConfigError as exc:
            seen["mismatch"] = str(exc)
        blocked = Checkpointer.from_env(f"{tmp}/blocked/", None, handler=DcpHandler)  # a file: rank 0 cannot publish
        try:
            blocked.save({"model": get_model_state_dict(model)}, 0, {})
        except ExpCkptError as exc:
            seen["rank0_failed"] = str(exc)
        except OSError as exc:
            seen["rank0_failed"] = f"own: {type(exc).__name__}"
        Path(f"{tmp}/rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_save_and_one_process_loads_their_shards(tmp_path: Path) -> None:
    from expckpt import Checkpointer
    from expckpt.integrations.dcp import DcpHandler

    (tmp_path / "blocked").write_text("")
    context = mp.start_processes(_ranks, args=(str(tmp_path),), nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks hung")
    assert {q.name for q in (tmp_path / "ckpt").iterdir()} == DCP_FILES  # each rank its shard, one metadata
    assert not [q for q in tmp_path.iterdir() if ".expckpt-tmp-" in q.name]  # the staging directories are gone
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert same(saved[0]["model"], saved[1]["model"])
    single = _model()
    for param in single.parameters():
        param.data.zero_()
    checkpointer = Checkpointer.from_env(tmp_path / "ckpt/", None, handler=DcpHandler)  # no process group: 1 process
    resumed = checkpointer.restore({"model": single.state_dict()})
    assert resumed is not None and resumed.step == 1
    assert same(dict(single.state_dict()), saved[0]["model"])  # 2 ranks' shards, whole in one process
    assert torch.equal(torch.get_rng_state(), saved[0]["rng"])  # rank 0's RNG, saved in the DCP state
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all("ranks completed different steps [2, 3]" in s["mismatch"] for s in seen)
    assert seen[0]["rank0_failed"] == "own: FileExistsError"  # rank 0's own error, and on rank 1:
    assert seen[1]["rank0_failed"].startswith("rank 0 failed, so rank 1 stops too: FileExistsError")


def test_reset_of_a_directory_output_makes_the_next_run_start_from_scratch(tmp_path: Path) -> None:
    """`expckpt reset` marks the note the checkpointer reads (``ckpt``, not ``ckpt/``)."""
    from expckpt.store.project import Project
    from expckpt.ops.reset import reset_workspace
    from expckpt.store.session import SessionNote
    from test_multi_outputs import toy_project

    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    (proj / "ckpt").mkdir()
    SessionNote(ref="r", commit="c" * 40, md5="m.dir", size=1, step=0, mtime_ns=0, inode=0).write(proj, "ckpt")
    reset_workspace(Project(root=proj, workspace=proj))
    assert SessionNote.was_reset(proj, "ckpt") and not (proj / "ckpt").exists()


def _everything() -> Any:
    """A planner that loads every key of a DCP checkpoint (non-tensors with weights_only=True)."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    class Everything(_EmptyStateDictLoadPlanner):
        load_bytes = SafeLoadPlanner.load_bytes

    return Everything()


def dcp_state(project: Path, commit: str, tmp: Path) -> dict[str, Any]:
    """The ``ckpt/`` directory of checkpoint ``commit``, from the DVC cache, loaded whole."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    from torch.distributed.checkpoint import FileSystemReader

    lock = yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=project).stdout)
    (md5,) = [o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"].rstrip("/") == "ckpt"]
    cache = DvcCache.for_project(project, project / ".git")
    assert md5.endswith(".dir") and cache.has(md5), f"{commit[:7]}: ckpt {md5} is not in the cache"
    where = tmp / commit
    cache.checkout(md5, where)
    state: dict[str, Any] = {}
    _load_state_dict(state, FileSystemReader(where), planner=_everything(), no_dist=True)
    state.pop("expckpt/watch", None)  # the best value so far, not training state
    return state


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    project = make_example_project(tmp_path_factory.mktemp("dcp") / "p", "dcp", epochs=EPOCHS, checkpoint=CHECKPOINT)
    base = baseline(project)
    out = run("dvc", "exp", "run", "-n", "ref", cwd=project).stdout
    return {"project": project, "base": base, "out": out, "tmp": tmp_path_factory.mktemp("loaded")}


@pytest.mark.slow
def test_each_epoch_is_a_directory_checkpoint_with_metrics(proj: dict[str, Any]) -> None:
    p, base, out = proj["project"], proj["base"], proj["out"]
    assert CHECKPOINT_LINE.findall(out) == [f"ref@{n}" for n in range(EPOCHS)]  # once each, by rank 0
    refs = checkpoint_refs(p, base, "ref")
    assert sorted(lineage(p, refs[EPOCHS - 1])) == list(range(EPOCHS))
    cache = DvcCache.for_project(p, p / ".git")
    for step, commit in refs.items():
        record = meta(p, commit)
        metrics = show_json(p, commit, "dvclive/metrics.json")
        assert (record["step"], metrics["step"]) == (step, step)
        assert record["metrics"]["acc"] == pytest.approx(metrics["acc"])
        (md5,) = [
            o["md5"]
            for o in yaml.safe_load(run("git", "show", f"{commit}:dvc.lock", cwd=p).stdout)["stages"]["train"]["outs"]
        ]
        assert set(cache.manifest(md5)) == DCP_FILES  # DVC caches it as a directory
        state = dcp_state(p, commit, proj["tmp"])
        assert int(state[STEP_KEY]) == step and {rng_key(0), rng_key(1)} <= set(state)  # step, each rank's RNG
        assert not torch.equal(state[rng_key(0)], state[rng_key(1)])
    lock = yaml.safe_load((p / "dvc.lock").read_text())
    assert lock["stages"]["train"]["outs"][0]["nfiles"] == 3


@pytest.mark.slow
def test_apply_and_run_branches_with_lineage_and_resumes_exactly(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    k = EPOCHS - 3
    run("dvc", "exp", "apply", f"ref@{k}", cwd=p)
    out = run("dvc", "exp", "run", "-n", "branch", cwd=p).stdout
    assert out.count(f"Resuming from ckpt (ref@{k}): {k + 1} steps done") == 1, out  # by rank 0 only
    branch = checkpoint_refs(p, base, "branch")
    assert sorted(branch) == list(range(k + 1, EPOCHS))
    assert meta(p, branch[k + 1])["parent"] == refs[k]
    assert same(dcp_state(p, branch[EPOCHS - 1], proj["tmp"]), dcp_state(p, refs[EPOCHS - 1], proj["tmp"]))
    chains = {c["experiment"]: c for c in json.loads(run("expckpt", "show", "--json", cwd=p).stdout)}
    assert chains["branch"]["resumed_from"] == {"commit": refs[k], "name": f"ref@{k}"}


@pytest.mark.slow
def test_killed_rank_then_resume_ends_bitwise_equal(proj: dict[str, Any]) -> None:
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    run("expckpt", "reset", cwd=p)
    output = run_and_kill_rank(p, base, "killed", rank=1, after_step=1)
    killed = checkpoint_refs(p, base, "killed")
    assert 1 <= max(killed) < EPOCHS - 1, output
    last = max(killed)
    out = run("dvc", "exp", "run", "-n", "resumed", cwd=p).stdout
    assert f"Resuming from ckpt (killed@{last}): {last + 1} steps done" in out, out
    assert not [q for q in p.iterdir() if ".expckpt-tmp-" in q.name]  # a killed run's staging directory is gone
    resumed = checkpoint_refs(p, base, "resumed")
    chain = lineage(p, resumed[EPOCHS - 1])
    assert sorted(chain) == list(range(EPOCHS)) and chain[last] == killed[last]
    assert same(dcp_state(p, resumed[EPOCHS - 1], proj["tmp"]), dcp_state(p, refs[EPOCHS - 1], proj["tmp"]))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-cache", "after-publish"])
def test_rank_zero_killed_while_publishing_leaves_the_last_complete_directory(proj: dict[str, Any], point: str) -> None:
    """after-cache: every rank's files are in the staging directory and the cache, ``ckpt/`` is
    still the last checkpoint; after-publish: ``ckpt/`` is the new directory, with no ref yet."""
    p, base = proj["project"], proj["base"]
    refs = checkpoint_refs(p, base, "ref")
    run("expckpt", "reset", cwd=p)
    exp = f"crash-{point}"
    crashed = run("dvc", "exp", "run", "-n", exp, cwd=p, check=False, env={"EXPCKPT_CRASH_AT": f"{point}:2"})
    assert crashed.returncode != 0, crashed.stdout + crashed.stderr
    run("git", "checkout", "-q", "main", cwd=p)
    assert sorted(checkpoint_refs(p, base, exp)) == [0, 1]
    staging = [q for q in p.iterdir() if q.name.startswith(".expckpt-tmp-ckpt.")]
    assert len(staging) == 1 and staging[0].name.endswith(".dcp")  # recognisably expckpt's temp
    left = {q.name for q in staging[0].iterdir()}
    assert left == (DCP_FILES if point == "after-cache" else set())  # after-publish: all moved into ckpt/
    out = run("dvc", "exp", "run", "-n", f"{exp}-resumed", cwd=p).stdout
    assert f"Resuming from ckpt ({exp}@1): 2 steps done" in out, out
    # after-publish: ckpt/ held an unreferenced directory; `dvc exp run` put @1's back from dvc.lock
    # (written after the commit), or else expckpt rolls back to it ("did not finish")
    assert not [q for q in p.iterdir() if q.name.startswith(".expckpt-tmp-")]  # the killed run's staging is gone
    resumed = checkpoint_refs(p, base, f"{exp}-resumed")
    assert (
        sorted(resumed) == list(range(2, EPOCHS)) and meta(p, resumed[2])["parent"] == checkpoint_refs(p, base, exp)[1]
    )
    assert same(dcp_state(p, resumed[EPOCHS - 1], proj["tmp"]), dcp_state(p, refs[EPOCHS - 1], proj["tmp"]))


@pytest.mark.slow
def test_a_directory_mixing_two_checkpoints_is_rolled_back(
    proj: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a kill between two of rank 0's renames leaves: some files of one checkpoint, some of
    another. Loaded here by one process (world size 1) inside the run's DVC environment."""
    from expckpt.serialize.dirout import hash_dir
    from expckpt import Checkpointer
    from expckpt.integrations.dcp import DcpHandler
    from expckpt.store.session import SessionNote

    p, base = proj["project"], proj["base"]
    note = SessionNote.read(p, "ckpt")
    assert note is not None and note.step >= 1
    previous = lineage(p, note.commit)[note.step - 1]
    (md5,) = [
        o["md5"]
        for o in yaml.safe_load(run("git", "show", f"{previous}:dvc.lock", cwd=p).stdout)["stages"]["train"]["outs"]
    ]
    cache = DvcCache.for_project(p, p / ".git")
    older = cache.object_path(cache.manifest(md5)["__1_0.distcp"]).read_bytes()
    assert older != (p / "ckpt" / "__1_0.distcp").read_bytes()
    (p / "ckpt" / "__1_0.distcp").write_bytes(older)
    monkeypatch.chdir(p)
    for key, value in {
        "DVC_ROOT": str(p),
        "DVC_EXP_NAME": "mixed",
        "DVC_EXP_BASELINE_REV": base,
        "DVC_STAGE": "train",
    }.items():
        monkeypatch.setenv(key, value)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 10)
    )
    resumed = Checkpointer.from_env("ckpt/", None, handler=DcpHandler).restore({"model": model.state_dict()})
    assert resumed is not None and resumed.step == note.step
    assert "did not finish; resuming from the last complete one" in capsys.readouterr().out
    assert hash_dir(p / "ckpt")[0] == note.md5


@pytest.mark.slow
def test_verify_all_passes(proj: dict[str, Any]) -> None:
    result = run("expckpt", "verify", "--all", cwd=proj["project"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout
