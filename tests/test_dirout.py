"""Directory checkpoints in process: file layout, equal bytes, DVC's own manifest hash, gc of
directory objects, a crash part-way through publishing a directory, several outputs at once."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run
from expckpt.store.cache import DvcCache
from expckpt.train.checkpointer import Checkpointer
from expckpt.serialize.dirout import hash_dir
from expckpt.errors import MissingCheckpointError
from expckpt.serialize.dirstate import load_dir_checkpoint, split_payload, write_dir_temp
from expckpt.ops.gc import GcScope, execute_gc, plan_gc
from expckpt.store.gitstore import GitStore
from expckpt.store.records import load_records
from expckpt.state.state import TrainingState
from expckpt.ops.verify import verify_records
from test_multi_outputs import toy_project


class LoRALinear(torch.nn.Module):
    """A frozen base weight with a trained low-rank adapter as direct parameters."""

    def __init__(self, n: int, r: int = 2) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, n), requires_grad=False)
        self.a = torch.nn.Parameter(torch.zeros(r, n))
        self.b = torch.nn.Parameter(torch.randn(n, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight + self.b @ self.a).T


def frozen_backbone(width: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(backbone=torch.nn.Linear(width, width), head=torch.nn.Linear(width, 3)))
    model.backbone.requires_grad_(False)
    return model


def serialised(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_torch_save_of_equal_tensors_with_equal_keys_writes_equal_bytes() -> None:
    a = frozen_backbone()
    b = frozen_backbone()
    b.head.weight.data.add_(1.0)
    files_a = split_payload(TrainingState(model=a).capture(), {"model": a})
    files_b = split_payload(TrainingState(model=b).capture(), {"model": b})
    assert serialised(files_a["model/backbone.pt"]) == serialised(files_b["model/backbone.pt"])
    assert serialised(files_a["expckpt.pt"]) != serialised(files_b["expckpt.pt"])


def test_layout_splits_where_frozen_and_trained_parameters_meet() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        OrderedDict(embed=torch.nn.Embedding(10, 8), layer=LoRALinear(8), out=torch.nn.Linear(8, 2))
    )
    model.embed.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    files = split_payload(TrainingState(model=model, optimizer=opt).capture(), {"model": model})
    assert set(files) == {"expckpt.pt", "model/embed.pt", "model/layer/_frozen.pt"}
    assert set(files["model/layer/_frozen.pt"]) == {"layer.weight"}
    hot = files["expckpt.pt"]  # everything that changes while training: one file
    assert set(hot["model"]) == {"layer.a", "layer.b", "out.weight", "out.bias"} and "optimizer" in hot
    whole = torch.nn.Linear(4, 4)
    assert set(split_payload(TrainingState(net=whole).capture(), {"net": whole})) == {"expckpt.pt"}
    whole.requires_grad_(False)
    assert set(split_payload(TrainingState(net=whole).capture(), {"net": whole})) == {"expckpt.pt", "net.pt"}


def test_directory_round_trip_restores_every_object_exactly(tmp_path: Path) -> None:
    model = frozen_backbone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.head(torch.randn(4, 32)).sum().backward()
    opt.step()
    state = TrainingState(model=model, optimizer=opt, extras={"seen": 7})
    state.step = 5
    write_dir_temp(split_payload(state.capture(), state.modules()), tmp_path / "ckpt").publish()

    other = frozen_backbone()
    other.head.weight.data.zero_()
    other_opt = torch.optim.Adam([p for p in other.parameters() if p.requires_grad], lr=0.01)
    fresh = TrainingState(model=other, optimizer=other_opt, extras={"seen": 0})
    fresh.restore(load_dir_checkpoint(tmp_path / "ckpt"))
    assert fresh.step == 5 and fresh.extras == {"seen": 7}
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    assert serialised(opt.state_dict()) == serialised(other_opt.state_dict())


@pytest.mark.slow
def test_manifest_hash_is_the_one_dvc_add_computes(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    proj.mkdir()
    run("git", "init", "-q", cwd=proj)
    run("dvc", "init", "-q", cwd=proj)
    model = frozen_backbone()
    write_dir_temp(split_payload(TrainingState(model=model).capture(), {"model": model}), proj / "ckpt").publish()
    run("dvc", "add", "ckpt", cwd=proj)
    entry = yaml.safe_load((proj / "ckpt.dvc").read_text())["outs"][0]
    assert hash_dir(proj / "ckpt")[:3] == (entry["md5"], entry["size"], entry["nfiles"])


def train(
    proj: Path,
    exp: str,
    steps: range,
    monkeypatch: pytest.MonkeyPatch,
    *,
    paths: object = "ckpt/",
    config: dict | None = None,
) -> tuple[Checkpointer, TrainingState]:
    """Steps of a frozen-backbone run with DVC's run variables set, in process."""
    monkeypatch.chdir(proj)
    head = run("git", "rev-parse", "HEAD", cwd=proj).stdout.strip()
    env = {"DVC_ROOT": str(proj), "DVC_EXP_NAME": exp, "DVC_EXP_BASELINE_REV": head, "DVC_STAGE": "train"}
    model = frozen_backbone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    state = TrainingState(model=model, optimizer=opt)
    ema = TrainingState(ema=torch.nn.Linear(32, 3))
    states = {"model.pt": state, "ema.pt": ema} if isinstance(paths, list) else state
    ckpt = Checkpointer.from_env(paths, {"every": 1, **(config or {})}, env=env)  # type: ignore[arg-type]
    ckpt.restore(states)
    for step in steps:
        model.head(torch.randn(4, 32)).pow(2).mean().backward()
        opt.step()
        ema.objects["ema"].weight.data.add_(0.1)
        ckpt.save(states, step, {"loss": float(step)})
    ckpt.close(states)
    return ckpt, state


def test_unchanged_files_are_not_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    train(proj, "a", range(1), monkeypatch)
    backbone = os.stat(proj / "ckpt" / "model" / "backbone.pt")
    head = os.stat(proj / "ckpt" / "expckpt.pt")
    train(proj, "a", range(1, 3), monkeypatch)
    after = os.stat(proj / "ckpt" / "model" / "backbone.pt")
    assert (after.st_ino, after.st_mtime_ns) == (backbone.st_ino, backbone.st_mtime_ns)
    assert os.stat(proj / "ckpt" / "expckpt.pt").st_ino != head.st_ino
    recs = {r.name: r for r in load_records(GitStore.open(proj))}
    assert hash_dir(proj / "ckpt")[0] == recs["a@2"].outs["ckpt"].md5


def test_gc_counts_the_files_of_a_kept_directory_as_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    train(proj, "a", range(3), monkeypatch)
    store, cache = GitStore.open(proj), DvcCache.for_project(proj, proj / ".git")
    recs = {r.name: r for r in load_records(store)}
    kept = recs["a@2"].outs["ckpt"].md5
    plan = plan_gc(store, cache, proj, GcScope(workspace=True), keep_last=1)
    assert {r.name for r in plan.remove} == {"a@0", "a@1"}
    assert not (set(plan.objects) & cache.expand(kept)), "a kept directory's manifest and files stay"
    assert recs["a@0"].outs["ckpt"].md5 in plan.objects
    assert cache.manifest(recs["a@0"].outs["ckpt"].md5)["expckpt.pt"] in plan.objects
    execute_gc(plan, store, cache, proj)
    assert cache.has(kept)
    assert verify_records(load_records(store), store, cache) == []


def test_crash_part_way_through_renaming_a_directory_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    train(proj, "a", range(2), monkeypatch)
    cache = DvcCache.for_project(proj, proj / ".git")
    recs = {r.name: r for r in load_records(GitStore.open(proj))}
    # as if a checkpoint died after renaming its files but before deleting one its layout no
    # longer has: a mix of files expckpt wrote that no manifest describes
    old_head = cache.manifest(recs["a@0"].outs["ckpt"].md5)["expckpt.pt"]
    cache.checkout(old_head, proj / "ckpt" / "model" / "stale.pt")
    assert hash_dir(proj / "ckpt")[0] not in {r.outs["ckpt"].md5 for r in recs.values()}
    ckpt, state = train(proj, "a", range(0), monkeypatch)
    assert ckpt.resumed is not None and ckpt.resumed.rolled_back and ckpt.resumed.record.name == "a@1"
    assert hash_dir(proj / "ckpt")[0] == recs["a@1"].outs["ckpt"].md5
    assert state.step == 1


def test_two_outputs_in_one_commit_and_resumed_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = toy_project(tmp_path / "p", "multi", ["model.pt", "ema.pt"])
    train(proj, "m", range(2), monkeypatch, paths=["model.pt", "ema.pt"])
    store = GitStore.open(proj)
    recs = {r.name: r for r in load_records(store)}
    assert set(recs) == {"m@0", "m@1"}
    lock = yaml.safe_load(store.read_file(recs["m@1"].commit, "dvc.lock"))
    assert {o["path"]: o["md5"] for o in lock["stages"]["train"]["outs"]} == {
        p: o.md5 for p, o in recs["m@1"].outs.items()
    }
    ckpt, state = train(proj, "m", range(0), monkeypatch, paths=["model.pt", "ema.pt"])
    assert ckpt.resumed is not None and ckpt.resumed.record.name == "m@1" and state.step == 1


def test_a_lost_second_output_stops_training_instead_of_resuming_half(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model.pt is there, ema.pt and its cache object are gone: resuming the model alone would
    quietly start the EMA over, so the run stops naming the checkpoint ema.pt should be."""
    proj = toy_project(tmp_path / "p", "multi", ["model.pt", "ema.pt"])
    train(proj, "m", range(2), monkeypatch, paths=["model.pt", "ema.pt"])
    store, cache = GitStore.open(proj), DvcCache.for_project(proj, proj / ".git")
    ema_md5 = {r.name: r for r in load_records(store)}["m@1"].outs["ema.pt"].md5
    (proj / "ema.pt").unlink()
    cache.object_path(ema_md5).unlink()
    with pytest.raises(MissingCheckpointError, match=r"^ema\.pt should be checkpoint m@1 ") as info:
        train(proj, "m", range(0), monkeypatch, paths=["model.pt", "ema.pt"])
    assert info.value.path == proj / "ema.pt"
    assert (proj / "model.pt").exists(), "the last good checkpoint is never touched"


def test_a_directory_whose_files_are_complete_is_published_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a torch.distributed.checkpoint integration hands over: files it wrote itself."""
    from expckpt.serialize.dirout import WrittenDir
    from expckpt.train.wiring import wire

    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    monkeypatch.chdir(proj)
    head = run("git", "rev-parse", "HEAD", cwd=proj).stdout.strip()
    w = wire(
        "ckpt/", env={"DVC_ROOT": str(proj), "DVC_EXP_NAME": "dcp", "DVC_EXP_BASELINE_REV": head, "DVC_STAGE": "train"}
    )
    assert w.outputs[0].is_dir and w.committer is not None
    (proj / "ckpt").mkdir()
    (proj / "ckpt" / ".metadata").write_bytes(b"meta")
    (proj / "ckpt" / "__0_0.distcp").write_bytes(b"rank0" * 100)
    (proj / "ckpt" / "__1_0.distcp").write_bytes(b"rank1" * 100)
    record = w.committer.publish(
        WrittenDir.from_complete(proj / "ckpt"), step=0, metrics={}, live_files={}, parent=None
    )
    store, cache = w.committer.store, w.committer.cache
    assert record.outs["ckpt"].nfiles == 3 and record.outs["ckpt"].md5 == hash_dir(proj / "ckpt")[0]
    assert set(cache.manifest(record.outs["ckpt"].md5)) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert verify_records([record], store, cache) == []


def test_async_directory_checkpoints_publish_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    train(proj, "s", range(3), monkeypatch, config={"async": True})
    store, cache = GitStore.open(proj), DvcCache.for_project(proj, proj / ".git")
    recs = {r.name: r for r in load_records(store)}
    assert set(recs) == {"s@0", "s@1", "s@2"}
    assert hash_dir(proj / "ckpt")[0] == recs["s@2"].outs["ckpt"].md5
    assert verify_records(recs.values(), store, cache) == []
    ckpt, state = train(proj, "s", range(0), monkeypatch, config={"async": True})
    assert ckpt.resumed is not None and ckpt.resumed.record.name == "s@2" and state.step == 2


def test_an_unchanged_directory_is_not_read_again(tmp_path: Path) -> None:
    """hash_dir trusts the note's per-file stats: a file whose stat matches is not reread."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.pt").write_bytes(b"aaa")
    st = os.stat(tmp_path / "d" / "a.pt")
    noted = {"a.pt": ("0" * 32, st.st_size, st.st_mtime_ns, st.st_ino)}  # a hash it would never compute
    assert hash_dir(tmp_path / "d", noted)[3]["a.pt"][0] == "0" * 32
    (tmp_path / "d" / "a.pt").write_bytes(b"bbb")  # same size, new mtime: read again
    assert hash_dir(tmp_path / "d", noted)[3]["a.pt"][0] != "0" * 32


def test_several_outputs_need_a_training_state_each() -> None:
    from expckpt.errors import ConfigError
    from expckpt.state.stateset import as_state_files

    with pytest.raises(
        ConfigError, match=r"dict of checkpoint output path -> TrainingState \(got Linear for 'ema.pt'\)"
    ):
        as_state_files({"model.pt": TrainingState(extras={}), "ema.pt": torch.nn.Linear(2, 2)}, ["model.pt", "ema.pt"])


def test_one_state_for_a_stage_with_several_checkpoint_outputs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from expckpt.errors import ConfigError

    proj = toy_project(tmp_path / "p", "multi", ["model.pt", "ema.pt"])
    monkeypatch.chdir(proj)
    head = run("git", "rev-parse", "HEAD", cwd=proj).stdout.strip()
    env = {"DVC_ROOT": str(proj), "DVC_EXP_NAME": "x", "DVC_EXP_BASELINE_REV": head, "DVC_STAGE": "train"}
    with pytest.raises(
        ConfigError, match=r"stage 'train' has several checkpoint outputs \(model.pt, ema.pt\); say which"
    ):
        Checkpointer.from_env(None, {"every": 1}, env=env)


@pytest.mark.parametrize(
    "manifest",
    [
        b'{"relpath": "a"}',
        b'[{"relpath": "../x", "md5": "' + b"0" * 32 + b'"}]',
        b'[{"relpath": "a", "md5": "../../../../etc/passwd/xxxxxxxxxx"}]',
    ],
)
def test_a_crafted_manifest_names_no_file_outside(manifest: bytes) -> None:
    from expckpt.serialize.dirout import parse_manifest

    with pytest.raises(ValueError):
        parse_manifest(manifest)


class MixedWithBuffers(LoRALinear):
    """A mixed module with a persistent and a non-persistent buffer, an unset parameter and one
    frozen child registered under two names (all read through public torch APIs)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("cache", torch.zeros(n), persistent=False)
        self.register_parameter("unset", None)
        self.norm = torch.nn.LayerNorm(n).requires_grad_(False)
        self.alias = self.norm


def test_layout_of_a_mixed_module_counts_exactly_what_its_state_dict_saves() -> None:
    model = torch.nn.Sequential(OrderedDict(layer=MixedWithBuffers(4)))
    files = split_payload(TrainingState(model=model).capture(), {"model": model})
    assert set(files) == {"expckpt.pt", "model/layer/_frozen.pt", "model/layer/norm.pt", "model/layer/alias.pt"}
    assert set(files["model/layer/_frozen.pt"]) == {"layer.weight", "layer.scale"}  # no "cache", no "unset"
    assert set(files["model/layer/norm.pt"]) == {"layer.norm.weight", "layer.norm.bias"}
    assert set(files["model/layer/alias.pt"]) == {"layer.alias.weight", "layer.alias.bias"}
    assert set(files["expckpt.pt"]["model"]) == {"layer.a", "layer.b"}
