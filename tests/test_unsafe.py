"""A hostile directory manifest from a remote (issue 21 item 3): ``verify``, ``show`` and ``list``
mark the checkpoint UNSAFE and say not to apply it (DVC's ``exp apply`` would write outside)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import run
from expckpt.store.cache import DvcCache
from expckpt.serialize.dirout import UnsafeManifestError, parse_manifest
from expckpt.store.gitstore import GitStore
from expckpt.store.records import OutputHash, format_message, load_records
from expckpt.store.refs import CheckpointRef
from expckpt.ops.unsafe import unsafe_checkpoints
from expckpt.ops.verify import verify_records
from test_dirout import train
from test_multi_outputs import toy_project

HOSTILE = ["../../../ESCAPED.pt", "/tmp/ESCAPED.pt", "..\\\\..\\\\ESCAPED.pt", "a\x00b"]


def plant_hostile_checkpoint(proj: Path, relpath: str) -> str:
    """What a hostile remote would send: checkpoint ``evil@0`` whose ``ckpt`` manifest names
    ``relpath``, its objects in the cache (as ``dvc exp pull`` puts them there)."""
    store, cache = GitStore.open(proj), DvcCache.for_project(proj, proj / ".git")
    good = {r.name: r for r in load_records(store)}["a@0"]
    files = cache.manifest(good.outs["ckpt"].md5)
    entries = [{"md5": md5, "relpath": rel} for rel, md5 in files.items()] + [
        {"md5": next(iter(files.values())), "relpath": relpath}
    ]
    data = json.dumps(entries).encode()
    md5 = hashlib.md5(data).hexdigest() + ".dir"
    obj = cache.object_path(md5)
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    lock = store.read_file(good.commit, "dvc.lock").decode().replace(good.outs["ckpt"].md5, md5)
    ref = CheckpointRef(baseline=good.ref.baseline, exp="evil", step=0)
    outs = {"ckpt": OutputHash(md5, good.outs["ckpt"].size, good.outs["ckpt"].nfiles)}
    tree = store.tree_with_files(store.commit_tree(good.commit), {"dvc.lock": lock.encode()})
    commit = store.write_commit(
        tree, [good.ref.baseline], format_message(ref, parent=None, outs=outs, metrics={}, time=1.0e9)
    )
    store.create_ref(ref.ref, commit)
    return commit


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proj = toy_project(tmp_path / "p", "dir", ["ckpt/"])
    train(proj, "a", range(1), monkeypatch)
    plant_hostile_checkpoint(proj, HOSTILE[0])
    return proj


@pytest.mark.parametrize("relpath", HOSTILE)
def test_every_hostile_relpath_is_refused_as_unsafe(relpath: str) -> None:
    with pytest.raises(UnsafeManifestError) as caught:
        parse_manifest(json.dumps([{"md5": "0" * 32, "relpath": relpath}]).encode())
    assert caught.value.relpath == relpath


def test_verify_show_and_list_mark_the_hostile_checkpoint_unsafe(hostile: Path) -> None:
    store, cache = GitStore.open(hostile), DvcCache.for_project(hostile, hostile / ".git")
    records = load_records(store)
    problems = verify_records(records, store, cache)
    assert [str(p).split(": ", 1)[0].split(" ")[0] for p in problems] == ["evil@0"]
    assert "UNSAFE: the directory manifest of ckpt names '../../../ESCAPED.pt', outside ckpt/" in str(problems[0])
    assert "do not `dvc exp apply` it" in str(problems[0])
    assert set(unsafe_checkpoints(records, cache).values()) == {
        "UNSAFE: the directory manifest of ckpt names '../../../ESCAPED.pt', outside ckpt/"
    }

    verify = run("expckpt", "verify", cwd=hostile, check=False)
    assert verify.returncode == 1 and "evil@0" in verify.stderr and "UNSAFE" in verify.stderr

    show = run("expckpt", "show", cwd=hostile).stdout
    assert "═ evil@0 UNSAFE" in show
    assert "evil@0: UNSAFE: the directory manifest of ckpt names '../../../ESCAPED.pt', outside ckpt/: do not" in show
    assert "a@0 UNSAFE" not in show
    shown = json.loads(run("expckpt", "show", "--json", cwd=hostile).stdout)
    marks = {c["name"]: c["unsafe"] for chain in shown for c in chain["checkpoints"]}
    assert marks["a@0"] is None and marks["evil@0"].startswith("UNSAFE")

    listed = run("expckpt", "list", cwd=hostile)
    assert "evil@0 UNSAFE" in listed.stdout
    assert listed.stderr.startswith("expckpt: warning: evil@0: UNSAFE: the directory manifest of ckpt")
    assert {r["name"]: r["unsafe"] for r in json.loads(run("expckpt", "list", "--json", cwd=hostile).stdout)}[
        "a@0"
    ] is None
