#!/usr/bin/env python
"""Listing many checkpoints: ``expckpt show`` vs ``dvc exp show``, and what checkpoint refs cost
``dvc exp show`` compared with ordinary experiment refs.

Repositories (the example project, committed) are filled directly through expckpt's own
``GitStore`` and ``records.format_message``, exactly as ``Committer.publish`` writes a real
checkpoint: one commit per ref whose parent is the baseline, holding the baseline's tree plus a
dvc.lock (rendered by ``LockBuilder`` with a fresh model.pt hash) and dvclive/metrics.json,
under ``refs/exps/<baseline[:2]>/<baseline[2:]>/<exp>@<step>`` (experiments of 20 steps each).
The "ordinary" repository gets the same commits the way ``dvc exp run`` names them: parent =
baseline, message ``dvc: commit experiment <hash>``, ref name without ``@``.

Timed, as a user runs them (subprocesses, start-up included):
* ``expckpt show`` at --n refs (default 1000) and at --dvc-n refs (default 200);
* ``dvc exp show --no-pager`` at --dvc-n refs: the first call (DVC's exp cache cold), then
  ``-f`` (forced re-collection, i.e. uncached again) and cached calls;
* the same ``dvc exp show`` on --dvc-n ordinary experiment refs.
Targets: expckpt show <= 1 s at 1000 refs and >= 10x faster than dvc exp show; dvc exp show
on checkpoint refs <= 1.2x of the same number of ordinary refs.

    python bench/listing.py                  # 1000 refs for expckpt, 200 for dvc exp show
    python bench/listing.py --dvc-n 1000     # dvc exp show at 1000 too (slow)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STEPS_PER_EXP = 20
TARGET_SHOW_S = 1.0
TARGET_SPEEDUP = 10.0
TARGET_REFS_RATIO = 1.2


def fill(repo: Path, env: dict[str, str], n: int, kind: str) -> float:
    """Write ``n`` experiment commits + refs into ``repo``; return the seconds it took."""
    C.apply_env(env)
    from expckpt.store.gitstore import GitStore
    from expckpt.store.lockfile import LockBuilder
    from expckpt.store.project import Project
    from expckpt.store.records import OutputHash, format_message
    from expckpt.store.refs import EXPS_PREFIX, CheckpointRef

    start = time.perf_counter()
    store = GitStore.open(repo)
    baseline = store.get_ref("HEAD")
    assert baseline is not None
    base_tree = store.commit_tree(baseline)
    lock = LockBuilder.prepare(Project(root=repo, workspace=repo), "train")
    now = time.time() - n
    previous: dict[str, str] = {}
    for i in range(n):
        exp, step = f"exp{i // STEPS_PER_EXP:03d}", i % STEPS_PER_EXP
        md5 = hashlib.md5(f"{kind}-{i}".encode()).hexdigest()
        outs = {"model.pt": OutputHash(md5, 139_453)}
        metrics = {"acc": round(0.5 + 0.02 * step, 4), "loss": round(2.0 / (step + 1), 4)}
        files = {
            "dvc.lock": lock.render(outs).lock,
            "dvclive/metrics.json": json.dumps({"step": step, **metrics}, indent=4).encode(),
        }
        tree = store.tree_with_files(base_tree, files)
        ref = CheckpointRef(baseline=baseline, exp=exp, step=step)
        if kind == "checkpoint":
            message = format_message(ref, parent=previous.get(exp), outs=outs, metrics=metrics, time=now + i)
            name = ref.ref
        else:
            message = f"dvc: commit experiment {hashlib.sha256(md5.encode()).hexdigest()}"
            name = f"{EXPS_PREFIX}{baseline[:2]}/{baseline[2:]}/{exp}-s{step}"
        commit = store.write_commit(tree, [baseline], message)
        store.create_ref(name, commit)
        previous[exp] = commit
    return time.perf_counter() - start


def build(root: Path, name: str, env: dict[str, str], n: int, kind: str) -> tuple[Path, float]:
    repo = C.make_project(root / name, env)
    seconds = fill(repo, env, n, kind)
    count = len(C.run(["git", "for-each-ref", "refs/exps"], cwd=repo, env=env).stdout.splitlines())
    print(f"   {name}: {count} {kind} refs written in {C.secs(seconds)}", flush=True)
    return repo, seconds


def time_cmd(args: list[str], repo: Path, env: dict[str, str], runs: int) -> tuple[list[float], str]:
    times, out = [], ""
    for _ in range(runs):
        elapsed, proc = C.timed_run(args, cwd=repo, env=env)
        times.append(elapsed)
        out = proc.stdout
    return times, out


def dvc_show(repo: Path, env: dict[str, str], runs: int) -> dict[str, Any]:
    args = ["dvc", "exp", "show", "--no-pager"]
    first, out = time_cmd(args, repo, env, 1)
    forced, _ = time_cmd([*args, "-f"], repo, env, runs)
    cached, _ = time_cmd(args, repo, env, runs)
    rows = sum(1 for line in out.splitlines() if "exp" in line and ("@" in line or "-s" in line))
    return {
        "first_s": first[0],
        "uncached_s": C.summary(first + forced),
        "cached_s": C.summary(cached),
        "rows_shown": rows,
        "output_lines": len(out.splitlines()),
    }


def in_process_show(repo: Path, env: dict[str, str]) -> dict[str, float]:
    """Where expckpt show's time goes: import, ref listing + parsing, rendering (in this process)."""
    C.apply_env(env)
    import os

    cwd = os.getcwd()
    os.chdir(repo)
    try:
        from expckpt.cli.context import Context
        from expckpt.cli.context import _tree
        from expckpt.ops.showtree import render_tree

        t0 = time.perf_counter()
        ctx = Context()
        catalog = ctx.catalog(False)
        t1 = time.perf_counter()
        text = render_tree(_tree(ctx, catalog, None))
        t2 = time.perf_counter()
    finally:
        os.chdir(cwd)
    return {"load_catalog_s": t1 - t0, "render_s": t2 - t1, "records": len(catalog.records), "lines": len(text.splitlines())}


def import_time(env: dict[str, str], module: str, runs: int = 3) -> float:
    times = [C.timed_run([str(C.VENV_BIN / "python"), "-c", f"import {module}"], cwd=C.REPO, env=env)[0] for _ in range(runs)]
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="checkpoint refs for expckpt show (default 1000)")
    parser.add_argument("--dvc-n", type=int, default=200, help="refs for the dvc exp show comparisons (default 200)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls of each command (default 3)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    C.header(f"listing: expckpt show ({args.n} refs) vs dvc exp show ({args.dvc_n} refs)")
    root = C.workdir("listing", keep=args.keep)
    env = C.isolated_env(root / "home")
    env["COLUMNS"] = "250"
    big, fill_big = build(root, f"ckpt{args.n}", env, args.n, "checkpoint")
    if args.dvc_n == args.n:
        small, fill_small = big, fill_big
    else:
        small, fill_small = build(root, f"ckpt{args.dvc_n}", env, args.dvc_n, "checkpoint")
    plain, fill_plain = build(root, f"plain{args.dvc_n}", env, args.dvc_n, "ordinary")

    print("   timing expckpt show ...", flush=True)
    show_big, out_big = time_cmd(["expckpt", "show"], big, env, args.runs)
    show_small, _ = time_cmd(["expckpt", "show"], small, env, args.runs)
    breakdown = in_process_show(big, env)
    imports = {m: import_time(env, m) for m in ("torch", "expckpt.cli.main", "expckpt.ops.showtree")}
    print("   timing dvc exp show on checkpoint refs ...", flush=True)
    dvc_ckpt = dvc_show(small, env, max(2, args.runs - 1))
    print("   timing dvc exp show on ordinary refs ...", flush=True)
    dvc_plain = dvc_show(plain, env, max(2, args.runs - 1))

    e_big, e_small = statistics.median(show_big), statistics.median(show_small)
    speedup_uncached = dvc_ckpt["first_s"] / e_small
    speedup_cached = dvc_ckpt["cached_s"]["median"] / e_small
    ratio_uncached = dvc_ckpt["uncached_s"]["median"] / dvc_plain["uncached_s"]["median"]
    ratio_cached = dvc_ckpt["cached_s"]["median"] / dvc_plain["cached_s"]["median"]
    ratio_first = dvc_ckpt["first_s"] / dvc_plain["first_s"]

    rows = [
        ["command", "refs", "time (median)", "figure", "target", "verdict"],
        ["expckpt show", args.n, C.secs(e_big), C.secs(e_big), f"<= {TARGET_SHOW_S:.0f} s", C.verdict(e_big, TARGET_SHOW_S)],
        ["expckpt show", args.dvc_n, C.secs(e_small), "", "", ""],
        ["dvc exp show (first call, uncached)", args.dvc_n, C.secs(dvc_ckpt["first_s"]),
         f"{speedup_uncached:.1f}x expckpt", f">= {TARGET_SPEEDUP:.0f}x", C.verdict(speedup_uncached, TARGET_SPEEDUP, lower_is_better=False)],
        ["dvc exp show (cached)", args.dvc_n, C.secs(dvc_ckpt["cached_s"]["median"]),
         f"{speedup_cached:.1f}x expckpt", f">= {TARGET_SPEEDUP:.0f}x", C.verdict(speedup_cached, TARGET_SPEEDUP, lower_is_better=False)],
        ["dvc exp show -f, checkpoint refs", args.dvc_n, C.secs(dvc_ckpt["uncached_s"]["median"]),
         f"{ratio_uncached:.2f}x ordinary", f"<= {TARGET_REFS_RATIO}x", C.verdict(ratio_uncached, TARGET_REFS_RATIO)],
        ["dvc exp show -f, ordinary refs", args.dvc_n, C.secs(dvc_plain["uncached_s"]["median"]), "1.00x", "", ""],
        ["dvc exp show cached, checkpoint refs", args.dvc_n, C.secs(dvc_ckpt["cached_s"]["median"]),
         f"{ratio_cached:.2f}x ordinary", f"<= {TARGET_REFS_RATIO}x", C.verdict(ratio_cached, TARGET_REFS_RATIO)],
        ["dvc exp show cached, ordinary refs", args.dvc_n, C.secs(dvc_plain["cached_s"]["median"]), "1.00x", "", ""],
    ]
    print()
    print(C.table(rows))
    print(f"\nexpckpt show at {args.n} refs, in-process: catalog {C.ms(breakdown['load_catalog_s'])}, "
          f"render {C.ms(breakdown['render_s'])} ({breakdown['records']} records, {breakdown['lines']} lines); "
          f"process start-up: `import torch` {C.secs(imports['torch'])}, `import expckpt.cli.main` {C.secs(imports['expckpt.cli.main'])}"
          f" (expckpt/__init__ imports torch), `import expckpt.ops.showtree` {C.secs(imports['expckpt.ops.showtree'])}")
    C.write_result("listing", {
        "n": args.n,
        "dvc_n": args.dvc_n,
        "fill_seconds": {"checkpoint_n": fill_big, "checkpoint_dvc_n": fill_small, "ordinary_dvc_n": fill_plain},
        "expckpt_show_s": {"n": C.summary(show_big), "dvc_n": C.summary(show_small)},
        "expckpt_show_output_lines": len(out_big.splitlines()),
        "expckpt_show_in_process": breakdown,
        "import_s": imports,
        "dvc_exp_show_checkpoint_refs": dvc_ckpt,
        "dvc_exp_show_ordinary_refs": dvc_plain,
        "speedup_vs_dvc_first_call": speedup_uncached,
        "speedup_vs_dvc_cached": speedup_cached,
        "checkpoint_vs_ordinary_uncached": ratio_uncached,
        "checkpoint_vs_ordinary_first_call": ratio_first,
        "checkpoint_vs_ordinary_cached": ratio_cached,
        "targets": {"expckpt_show_s": TARGET_SHOW_S, "speedup": TARGET_SPEEDUP, "refs_ratio": TARGET_REFS_RATIO},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
