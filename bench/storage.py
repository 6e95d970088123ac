#!/usr/bin/env python
"""Storage: after N checkpoints with ``keep_last: K`` and ``expckpt gc --workspace --force``,
the DVC cache should hold K checkpoints' worth of bytes (target: within 5% of K x size), and a
checkpoint should cost no copy beyond its cache object and the workspace file (which are one
file: the workspace model.pt is a hardlink of the newest cache object).

Two setups, both on a real Git + DVC repository holding the example project:

A. in-process (the Checkpointer path of bench/blocking.py, variables as `dvc exp run` sets
   them), a --size-mb state (default 12 MB), N steps with ``keep_last: K, keep_best: 0``; after
   every step the cache is inspected (objects, bytes, hardlinks of model.pt);
B. a real ``dvc exp run`` of the example for N epochs with the same retention (skip with
   --skip-dvc-run): here DVC itself also commits model.pt when the run ends.

Bytes are counted per inode (a hardlinked file once), and cross-checked with ``du -s -B1``,
which also counts a hardlinked file once per invocation.

    python bench/storage.py                  # N=20, K=3, 12 MB
    python bench/storage.py --skip-dvc-run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET_PERCENT = 5.0


def cache_objects(repo: Path) -> dict[str, os.stat_result]:
    base = repo / ".dvc" / "cache" / "files" / "md5"
    found: dict[str, os.stat_result] = {}
    if base.is_dir():
        for sub in base.iterdir():
            for obj in sub.iterdir():
                if obj.is_file():
                    found[sub.name + obj.name] = obj.stat()
    return found


def expckpt_logged(repo: Path) -> set[str]:
    log = repo / ".git" / "expckpt" / "cache-objects.log"
    return {line.split()[0] for line in log.read_text().splitlines() if line.strip()} if log.exists() else set()


def unique_bytes(stats: list[os.stat_result]) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) counting each inode once."""
    seen: dict[tuple[int, int], os.stat_result] = {}
    for st in stats:
        seen[(st.st_dev, st.st_ino)] = st
    return sum(s.st_size for s in seen.values()), sum(s.st_blocks * 512 for s in seen.values())


def du(paths: list[Path], cwd: Path) -> int:
    out = C.run(["du", "-s", "-c", "-B1", *[str(p) for p in paths if p.exists()]], cwd=cwd, env=dict(os.environ)).stdout
    return int(out.splitlines()[-1].split()[0])


def inspect(repo: Path, label: str) -> dict[str, Any]:
    objects = cache_objects(repo)
    logged = expckpt_logged(repo)
    model = repo / "model.pt"
    st = model.stat() if model.exists() else None
    model_md5 = None
    if st is not None:
        model_md5 = next((m for m, o in objects.items() if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino)), None)
    ckpt = {m: s for m, s in objects.items() if m in logged}
    other = {m: s for m, s in objects.items() if m not in logged}
    ckpt_bytes, ckpt_alloc = unique_bytes(list(ckpt.values()))
    all_with_ws, all_with_ws_alloc = unique_bytes(list(objects.values()) + ([st] if st else []))
    cache_bytes, _ = unique_bytes(list(objects.values()))
    return {
        "label": label,
        "cache_objects": len(objects),
        "checkpoint_objects": len(ckpt),
        "checkpoint_object_bytes": ckpt_bytes,
        "other_objects": {m: s.st_size for m, s in other.items()},
        "cache_bytes": cache_bytes,
        "cache_plus_workspace_bytes": all_with_ws,
        "cache_plus_workspace_allocated": all_with_ws_alloc,
        "model_pt_size": st.st_size if st else None,
        "model_pt_nlink": st.st_nlink if st else None,
        "model_pt_is_cache_object": model_md5,
        "du_cache_and_model_pt": du([repo / ".dvc" / "cache" / "files", model], repo),
        "du_cache": du([repo / ".dvc" / "cache" / "files"], repo),
    }


def gc(repo: Path, env: dict[str, str]) -> str:
    proc = C.run(["expckpt", "gc", "--workspace", "--force"], cwd=repo, env=env)
    return proc.stdout.strip()


def refs(repo: Path, env: dict[str, str]) -> list[str]:
    return C.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, env=env).stdout.split()


def in_process(root: Path, env: dict[str, str], n: int, k: int, size_mb: int) -> dict[str, Any]:
    import blocking as B  # the same state and Checkpointer set-up as the blocking benchmark

    C.apply_env(env)
    repo = C.make_project(root / "inproc", env)
    model, optimizer, _ = B.build_state(size_mb)
    state = B.TrainingState(model=model, optimizer=optimizer)
    ck = B.checkpointer_for(repo, C.head(repo, env), "store", False, {"keep_last": k, "keep_best": 0})
    steps = []
    for step in range(n):
        B.train_a_little(model)
        metrics = {"acc": 0.5 + 0.01 * step, "loss": 1.0 / (step + 1)}
        B.write_live_files(repo, step, metrics)
        ck.save(state, step, metrics)
        snap = inspect(repo, f"after step {step}")
        steps.append({k2: snap[k2] for k2 in ("cache_objects", "checkpoint_object_bytes", "model_pt_nlink",
                                               "model_pt_is_cache_object", "cache_plus_workspace_bytes")})
    ck.close()
    before = inspect(repo, "before gc")
    refs_before = refs(repo, env)
    gc_out = gc(repo, env)
    after = inspect(repo, "after gc")
    return summarise("A. in-process Checkpointer", n, k, steps, before, after, refs_before, refs(repo, env), gc_out)


def dvc_run(root: Path, env: dict[str, str], n: int, k: int) -> dict[str, Any]:
    import yaml

    checkpoint = dict(yaml.safe_load((C.REPO / "params.yaml").read_text())["checkpoint"])
    checkpoint.update(keep_last=k, keep_best=0, every=1)
    repo = C.make_project(root / "dvcrun", env, epochs=n, checkpoint=checkpoint)
    wall, proc = C.timed_run(["dvc", "exp", "run", "-n", "store"], cwd=repo, env=env)
    import json

    note_path = repo / ".dvc" / "tmp" / "expckpt" / "model.pt.json"
    note = json.loads(note_path.read_text()) if note_path.exists() else {}
    model_stat = (repo / "model.pt").stat()
    before = inspect(repo, "before gc (after dvc exp run)")
    refs_before = refs(repo, env)
    gc_out = gc(repo, env)
    after = inspect(repo, "after gc")
    out = summarise("B. dvc exp run of the example", n, k, [], before, after, refs_before, refs(repo, env), gc_out)
    out["dvc_exp_run_wall_s"] = wall
    out["last_checkpoint_inode"] = note.get("inode")
    out["model_pt_inode_after_run"] = model_stat.st_ino
    out["workspace_file_replaced_after_last_checkpoint"] = note.get("inode") != model_stat.st_ino
    out["dvc_cache_type"] = C.run(["dvc", "config", "cache.type"], cwd=repo, env=env, check=False).stdout.strip() or "(default: reflink,copy)"
    return out


def summarise(name: str, n: int, k: int, steps: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any],
              refs_before: list[str], refs_after: list[str], gc_out: str) -> dict[str, Any]:
    size = after["model_pt_size"]
    expected = k * size
    ratio = after["checkpoint_object_bytes"] / expected
    ckpt_refs = [r for r in refs_after if "@" in r.rsplit("/", 1)[-1]]
    linked_during = [s["model_pt_nlink"] == 2 and s["model_pt_is_cache_object"] is not None for s in steps]
    return {
        "setup": name,
        "checkpoints": n,
        "keep_last": k,
        "checkpoint_size": size,
        "expected_bytes": expected,
        "before_gc": before,
        "after_gc": after,
        "refs_before_gc": refs_before,
        "refs_after_gc": refs_after,
        "checkpoint_refs_after_gc": len(ckpt_refs),
        "gc_output": gc_out,
        "checkpoint_bytes_vs_expected": ratio,
        "deviation_percent": 100 * (ratio - 1),
        "cache_bytes_vs_expected": after["cache_bytes"] / expected,
        "cache_plus_workspace_vs_expected": after["cache_plus_workspace_bytes"] / expected,
        "workspace_hardlinked_every_step": all(linked_during) if steps else None,
        "per_step": steps,
    }


def report(r: dict[str, Any]) -> None:
    a, b = r["after_gc"], r["before_gc"]
    size = r["checkpoint_size"]
    print(f"-- {r['setup']}: {r['checkpoints']} checkpoints of {size / 1e6:.2f} MB, keep_last {r['keep_last']}")
    rows = [
        ["", "before gc", "after gc", f"K x size = {r['expected_bytes'] / 1e6:.2f} MB"],
        ["checkpoint refs", sum('@' in x.rsplit('/', 1)[-1] for x in r["refs_before_gc"]), r["checkpoint_refs_after_gc"], ""],
        ["checkpoint objects in cache", b["checkpoint_objects"], a["checkpoint_objects"], ""],
        ["checkpoint object bytes", f"{b['checkpoint_object_bytes'] / 1e6:.2f} MB", f"{a['checkpoint_object_bytes'] / 1e6:.2f} MB",
         f"{r['checkpoint_bytes_vs_expected']:.3f}x ({r['deviation_percent']:+.1f}%; target within {TARGET_PERCENT:.0f}%: "
         f"{'meets target' if abs(r['deviation_percent']) <= TARGET_PERCENT else 'MISSES target'})"],
        ["all cache objects (incl. data/, DVC's own)", f"{b['cache_bytes'] / 1e6:.2f} MB", f"{a['cache_bytes'] / 1e6:.2f} MB",
         f"{r['cache_bytes_vs_expected']:.3f}x"],
        ["cache + workspace model.pt (per inode)", f"{b['cache_plus_workspace_bytes'] / 1e6:.2f} MB",
         f"{a['cache_plus_workspace_bytes'] / 1e6:.2f} MB", f"{r['cache_plus_workspace_vs_expected']:.3f}x"],
        ["du -s -B1 cache model.pt", f"{b['du_cache_and_model_pt'] / 1e6:.2f} MB", f"{a['du_cache_and_model_pt'] / 1e6:.2f} MB", ""],
        ["model.pt st_nlink", b["model_pt_nlink"], a["model_pt_nlink"], ""],
        ["model.pt is the newest cache object (same inode)", bool(b["model_pt_is_cache_object"]), bool(a["model_pt_is_cache_object"]), ""],
    ]
    print(C.table(rows))
    if r["per_step"]:
        print(f"   model.pt hardlinked to its cache object (st_nlink 2, same inode) after every step: {r['workspace_hardlinked_every_step']}")
    if "workspace_file_replaced_after_last_checkpoint" in r:
        print(f"   model.pt inode at the last checkpoint {r['last_checkpoint_inode']}, after dvc exp run {r['model_pt_inode_after_run']}:"
              f" {'replaced by a separate copy when DVC committed the run' if r['workspace_file_replaced_after_last_checkpoint'] else 'unchanged'}"
              f" (cache.type {r['dvc_cache_type']})")
    print(f"   gc: {r['gc_output'].splitlines()[-1] if r['gc_output'] else '-'}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="checkpoints (default 20)")
    parser.add_argument("--keep-last", type=int, default=3, help="K (default 3)")
    parser.add_argument("--size-mb", type=int, default=12, help="state size for the in-process run (default 12)")
    parser.add_argument("--skip-dvc-run", action="store_true", help="only the in-process setup")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    C.header(f"storage after {args.n} checkpoints, keep_last {args.keep_last}, expckpt gc --workspace --force")
    root = C.workdir("storage", keep=args.keep)
    env = C.isolated_env(root / "home")
    results = [in_process(root, env, args.n, args.keep_last, args.size_mb)]
    report(results[-1])
    if not args.skip_dvc_run:
        results.append(dvc_run(root, env, args.n, args.keep_last))
        report(results[-1])
    C.write_result("storage", {"target_percent": TARGET_PERCENT, "setups": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
