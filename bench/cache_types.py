#!/usr/bin/env python
"""What each DVC ``cache.type`` costs a checkpoint: hardlink vs reflink vs copy, side by side.

In-process on a real Git + DVC repository holding the example project, through the real
``Committer.publish`` (cache object, rename onto model.pt, Git commit, dvc.lock, ref, note), with
the variables ``dvc exp run`` sets. Before each timed publish a fresh checkpoint temp file of the
given size is written and fsynced, as ``write_temp`` does (that part is the same for every type
and is reported once, as the "temp write" column). The types alternate within each repetition.

Blocking ms = what a synchronous checkpoint waits for beyond ``write_temp`` (the publish); in
async mode the same time is spent in the background thread. ``cache.add`` is shown apart: it is
the only part that depends on the type.

It also says whether this filesystem supports reflinks (FICLONE); where it does not, the
``reflink,copy`` row (DVC's default) is a failed reflink attempt plus a copy.

Second part (``--exp-run MB``): does ``dvc exp run``'s own commit at the end of the run re-hash
the checkpoint file? A one-checkpoint stage publishes a MB-sized model.pt through the real
Committer inside a real ``dvc exp run``, writes the time it finished, and exits; the figure is
the time from there to the end of ``dvc exp run`` (DVC hashes outputs, commits them, writes
dvc.lock and the experiment commit). Variants, alternating: expckpt records the hash in DVC's
state database (this code); the same with model.pt's mtime bumped after publishing (the state
entry no longer matches, so DVC must hash); and, with ``--before-src DIR``, the expckpt code in
DIR (e.g. a checkout of the previous commit).

    python bench/cache_types.py                    # 12, 100, 500 MB; 3 repetitions
    python bench/cache_types.py --sizes 12 --reps 5
    python bench/cache_types.py --sizes --exp-run 300 --before-src /work/main
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TYPES: dict[str, tuple[str, ...]] = {
    "hardlink": ("hardlink",),
    "reflink,copy (DVC default)": ("reflink", "copy"),
    "copy": ("copy",),
}


def reflink_supported(directory: Path) -> bool:
    from dvc_objects.fs.system import reflink

    src, dst = directory / ".reflink-probe-src", directory / ".reflink-probe-dst"
    src.write_bytes(b"probe")
    try:
        reflink(os.fspath(src), os.fspath(dst))
        return True
    except OSError:
        return False
    finally:
        for p in (src, dst):
            p.unlink(missing_ok=True)


def temp_checkpoint(dest: Path, size: int, salt: str) -> tuple[Any, float]:
    """A complete, fsynced temp file beside ``dest`` (what write_temp leaves), and its write time."""
    from expckpt.serialize.atomic import TEMP_MARK, WrittenFile

    block = os.urandom(1 << 20)
    digest = hashlib.md5(usedforsecurity=False)
    tmp = dest.with_name(f"{TEMP_MARK}{dest.name}.bench")
    start = time.perf_counter()
    with open(tmp, "wb") as handle:
        head = salt.encode().ljust(64, b"\0")
        handle.write(head)
        digest.update(head)
        left = size - len(head)
        while left > 0:
            chunk = block[: min(left, len(block))]
            handle.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return WrittenFile(tmp=tmp, dest=dest, md5=digest.hexdigest(), size=size), time.perf_counter() - start


STAGE_SCRIPT = """\
import hashlib, os, sys, time
from pathlib import Path
from expckpt.serialize.atomic import TEMP_MARK, WrittenFile
from expckpt.store.cache import DvcCache
from expckpt.publish.committer import Committer
from expckpt.store.gitstore import GitStore
from expckpt.store.project import Project, RunContext

run = RunContext.from_env()
project = Project.discover()
store = GitStore.open(project.root)
cache = DvcCache.for_project(project.root, store.git_dir)
c = Committer(project=project, run=run, store=store, cache=cache, checkpoint_path="model.pt", live_paths=[])
data = os.urandom(int(os.environ["CKPT_MB"]) << 20)
dest = project.workspace / "model.pt"
tmp = dest.with_name(TEMP_MARK + "model.pt")
with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
c.publish(WrittenFile(tmp, dest, hashlib.md5(data).hexdigest(), len(data)), step=1, metrics={}, live_files={}, parent=None)
if os.environ.get("BUMP_MTIME"):
    st = os.stat(dest)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
Path(os.environ["DONE_FILE"]).write_text(repr(time.time()))
"""

STAGE_YAML = """\
stages:
  train:
    cmd: python ckpt.py
    deps: [ckpt.py]
    outs:
      - model.pt:
          checkpoint: true
          persist: true
    always_changed: true
"""


def measure_exp_run(size_mb: int, reps: int, before_src: Path | None) -> None:
    """Seconds from the stage's exit to the end of ``dvc exp run``, per variant."""
    root = C.workdir("exp-run-rehash")
    base_env = C.isolated_env(root / "home")
    here = str(Path(__file__).resolve().parent.parent)
    variants: dict[str, dict[str, str]] = {
        "state db recorded (this code)": {"PYTHONPATH": here},
        "state entry invalidated (mtime bumped)": {"PYTHONPATH": here, "BUMP_MTIME": "1"},
    }
    if before_src is not None:
        variants[f"before ({before_src})"] = {"PYTHONPATH": str(before_src)}
    repo = root / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(STAGE_YAML)
    (repo / "ckpt.py").write_text(STAGE_SCRIPT)
    (repo / ".gitignore").write_text("/model.pt\n")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "stage"]):
        C.run(args, cwd=repo, env=base_env)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(reps):
        for name, extra in variants.items():
            done = root / "done"
            done.unlink(missing_ok=True)
            env = {**base_env, **extra, "CKPT_MB": str(size_mb), "DONE_FILE": str(done)}
            C.run(["dvc", "exp", "run", "-n", f"r{rep}-{len(samples[name])}-{abs(hash(name)) % 1000}"], cwd=repo, env=env)
            samples[name].append(time.time() - float(done.read_text()))
            C.run(["dvc", "gc", "-w", "-f"], cwd=repo, env=env)  # keep the disk from filling
    rows: list[list[Any]] = [["variant", f"stage exit -> dvc exp run done ({size_mb} MB model.pt)", "runs"]]
    for name, values in samples.items():
        rows.append([name, C.secs(C.summary(values)["median"]), " ".join(f"{v:.2f}" for v in values)])
    print(C.table(rows))
    C.write_result("exp_run_rehash", {"size_mb": size_mb, "reps": reps, "samples": samples}, command=C.reproduce_command())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[12, 100, 500], help="checkpoint sizes in MB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--exp-run", type=int, metavar="MB", help="also time dvc exp run's final commit with a MB model.pt")
    parser.add_argument("--before-src", type=Path, help="expckpt source tree to compare against in --exp-run")
    args = parser.parse_args()
    if args.exp_run:
        measure_exp_run(args.exp_run, args.reps, args.before_src)
    if not args.sizes:
        return

    C.header("cache.type: hardlink vs reflink vs copy, blocking ms per checkpoint")
    root = C.workdir("cache-types")
    env = C.isolated_env(root / "home")
    repo = C.make_project(root / "repo", env)
    C.run(["python", "download.py"], cwd=repo, env=env)
    C.apply_env(env)

    from expckpt.store.cache import DvcCache
    from expckpt.publish.committer import Committer
    from expckpt.store.gitstore import GitStore
    from expckpt.store.project import Project, RunContext

    supports_reflink = reflink_supported(repo)
    fs_type = C._fs_type(repo)
    print(f"   filesystem of the repo: {fs_type}; reflink (FICLONE) supported: {supports_reflink}\n")

    store = GitStore.open(repo)
    baseline = C.head(repo, env)
    project = Project(root=repo, workspace=repo)
    committers: dict[str, Committer] = {}
    for i, (label, link_types) in enumerate(TYPES.items()):
        cache = DvcCache(repo / ".dvc" / "cache", store.git_dir / "expckpt" / "cache-objects.log", link_types=link_types)
        run = RunContext(exp_name=f"type{i}", baseline=baseline, stage="train", dvc_root=repo)
        committers[label] = Committer(
            project=project, run=run, store=store, cache=cache, checkpoint_path="model.pt", live_paths=[]
        )

    samples: dict[tuple[int, str], dict[str, list[float]]] = {}
    step = 0
    for size_mb in args.sizes:
        for rep in range(args.reps + 1):  # the first round warms up (prepare, imports) and is dropped
            for label, committer in committers.items():
                step += 1
                written, write_s = temp_checkpoint(repo / "model.pt", size_mb << 20, f"{label}-{size_mb}-{rep}")
                cache = committer.cache
                original_add = cache.add
                add_s: list[float] = []

                def timed_add(*a: Any, _add: Any = original_add, **kw: Any) -> Any:
                    t = time.perf_counter()
                    try:
                        return _add(*a, **kw)
                    finally:
                        add_s.append(time.perf_counter() - t)

                cache.add = timed_add  # type: ignore[method-assign]
                start = time.perf_counter()
                committer.publish(written, step=step, metrics={}, live_files={}, parent=None)
                publish_s = time.perf_counter() - start
                cache.add = original_add  # type: ignore[method-assign]
                same_inode = os.stat(repo / "model.pt").st_ino == os.stat(cache.object_path(written.md5)).st_ino
                cache.remove(written.md5)
                if rep == 0:
                    continue
                entry = samples.setdefault((size_mb, label), {"publish": [], "cache_add": [], "temp_write": [], "same_inode": []})
                entry["publish"].append(publish_s)
                entry["cache_add"].append(add_s[0])
                entry["temp_write"].append(write_s)
                entry["same_inode"].append(float(same_inode))

    rows: list[list[Any]] = [["size", "cache.type", "publish (blocking)", "of which cache.add", "vs hardlink", "temp write", "model.pt = object inode"]]
    results = []
    for size_mb in args.sizes:
        hard = C.summary(samples[(size_mb, "hardlink")]["publish"])["median"]
        for label in TYPES:
            s = samples[(size_mb, label)]
            pub, add, wr = (C.summary(s[k]) for k in ("publish", "cache_add", "temp_write"))
            rows.append(
                [f"{size_mb} MB", label, C.ms(pub["median"]), C.ms(add["median"]), f"{pub['median'] / hard:.2f}x", C.ms(wr["median"]), "yes" if all(s["same_inode"]) else "no"]
            )
            results.append({"size_mb": size_mb, "cache_type": label, "publish": pub, "cache_add": add, "temp_write": wr, "same_inode": all(s["same_inode"])})
    print(C.table(rows))
    C.write_result(
        "cache_types",
        {"reflink_supported": supports_reflink, "filesystem": fs_type, "reps": args.reps, "results": results},
    )


if __name__ == "__main__":
    main()
