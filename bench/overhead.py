#!/usr/bin/env python
"""Whole-run overhead of checkpointing: ``dvc exp run`` of the example with a checkpoint every
step vs the same run with ``checkpoint.every: 0`` (and, by default, with ``checkpoint.async``).

One repository (the example project, its download stage already run and committed) is used for
every run; before each run the workspace is put back (``git reset --hard``, model.pt, dvclive/
and the session note removed), so every run trains from scratch. Variants alternate
(off, sync, async, off, sync, async, ...) so drift in machine load hits all of them alike.

Two figures per variant, medians over the repetitions:
* wall: the whole ``dvc exp run -n <name> -S epochs=N -S checkpoint.every=...`` command;
* loop: from the ``epoch 0:`` line to the ``epoch N-1:`` line of the training output
  (timestamped by a reader thread as they arrive; PYTHONUNBUFFERED=1 for every variant): N-1
  epochs and, with checkpointing, the N-1 checkpoints taken in between, without DVC's and
  Python's start-up;
* in-run checkpoint time (sync): for each step, from its ``epoch k:`` line to its
  ``Checkpoint experiment '...@k'`` line, i.e. how long next_step() blocked training; summed
  and divided by the every: 0 run's wall time. On a shared, busy machine epoch times swing by
  seconds, so this is the steadier estimate of the overhead; wall and loop are reported too.

Training threads: by default the runs get OMP_NUM_THREADS=1. With torch's default (2 intra-op
threads on this 2-core machine) any other busy process -- or expckpt's own background writer
in async mode -- makes every small parallel op wait for a descheduled thread, and the example's
epochs swing between 0.1 s and 15 s, which buries the effect being measured (see README).
``--threads 0`` keeps torch's default.

    python bench/overhead.py                 # 20 epochs, 3 repetitions, off/sync/async
    python bench/overhead.py --reps 2 --no-async
    python bench/overhead.py --threads 0     # torch's default thread count
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET = 10.0  # percent
EPOCH = re.compile(r"^epoch (\d+): ")
CHECKPOINT = re.compile(r"Checkpoint experiment '[^']*@(\d+)'")


def timed_lines(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, list[tuple[float, str]], int, str]:
    """Run a command; return its wall time, its stdout lines with arrival times, rc, stderr."""
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    err: list[str] = []
    t_err = threading.Thread(target=lambda: err.append(proc.stderr.read()))  # type: ignore[union-attr]
    t_err.start()
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    rc = proc.wait()
    t_err.join()
    return time.perf_counter() - start, lines, rc, "".join(err)


def reset_workspace(repo: Path, env: dict[str, str]) -> None:
    C.run(["git", "reset", "--hard", "-q", "HEAD"], cwd=repo, env=env)
    (repo / "model.pt").unlink(missing_ok=True)
    shutil.rmtree(repo / "dvclive", ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "tmp" / "expckpt", ignore_errors=True)


def prepare(root: Path, env: dict[str, str], epochs: int) -> Path:
    import yaml

    checkpoint = dict(yaml.safe_load((C.REPO / "params.yaml").read_text())["checkpoint"])
    checkpoint.setdefault("async", False)  # present, so `-S checkpoint.async=...` can override it
    repo = C.make_project(root / "repo", env, epochs=epochs, checkpoint=checkpoint)
    C.run(["dvc", "repro", "download"], cwd=repo, env=env)
    C.run(["git", "add", "dvc.lock"], cwd=repo, env=env)
    C.run(["git", "commit", "-qm", "data downloaded"], cwd=repo, env=env)
    return repo


VARIANTS: dict[str, list[str]] = {
    "off": ["-S", "checkpoint.every=0"],
    "sync": ["-S", "checkpoint.every=1", "-S", "checkpoint.async=false"],
    "async": ["-S", "checkpoint.every=1", "-S", "checkpoint.async=true"],
}


def one_run(repo: Path, env: dict[str, str], variant: str, name: str, epochs: int) -> dict[str, Any]:
    reset_workspace(repo, env)
    os.sync()
    args = ["dvc", "exp", "run", "-n", name, "-S", f"epochs={epochs}", *VARIANTS[variant]]
    wall, lines, rc, err = timed_lines(args, repo, env)
    if rc != 0:
        raise RuntimeError(f"{' '.join(args)} exited {rc}:\n{err[-3000:]}\n" + "\n".join(l for _, l in lines[-30:]))
    epochs_seen = {int(m.group(1)): t for t, l in lines if (m := EPOCH.match(l))}
    published = {int(m.group(1)): t for t, l in lines if (m := CHECKPOINT.search(l))}
    checkpoints = len(published)
    # sync: the training process prints `epoch k:` and then blocks in next_step() until it
    # prints `Checkpoint experiment '...@k'`; the gap is that checkpoint's in-run cost.
    gaps = [published[k] - epochs_seen[k] for k in published if k in epochs_seen]
    first, last = min(epochs_seen), max(epochs_seen)
    return {
        "variant": variant,
        "name": name,
        "wall_s": wall,
        "loop_s": epochs_seen[last] - epochs_seen[first],
        "loop_epochs": f"{first}..{last}",
        "checkpoint_lines": checkpoints,
        "in_run_checkpoint_s": sum(gaps) if variant == "sync" else None,
        "in_run_checkpoint_median_s": C.summary(gaps).get("median") if variant == "sync" and gaps else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-async", action="store_true", help="only off and sync")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for the runs (default 1; 0 = torch's default, 2 threads here)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    variants = ["off", "sync"] + ([] if args.no_async else ["async"])

    C.header(f"whole-run overhead of checkpointing every step ({args.epochs} epochs of the example)")
    root = C.workdir("overhead", keep=args.keep)
    env = C.isolated_env(root / "home")
    env["PYTHONUNBUFFERED"] = "1"  # output lines arrive (and are timestamped) when printed; all variants
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    print(f"   training threads: OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset: torch default)')}\n")
    repo = prepare(root, env, args.epochs)

    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        order = variants[rep % len(variants):] + variants[: rep % len(variants)]
        for variant in order:
            run = one_run(repo, env, variant, f"{variant}-{rep}", args.epochs)
            runs.append(run)
            extra = (f"; epoch line -> checkpoint line: {C.secs(run['in_run_checkpoint_s'])} in all,"
                     f" {C.ms(run['in_run_checkpoint_median_s'])} median" if run["in_run_checkpoint_s"] is not None else "")
            print(f"   rep {rep + 1} {variant:5}: wall {C.secs(run['wall_s'])}, loop {C.secs(run['loop_s'])}"
                  f" ({run['checkpoint_lines']} checkpoints{extra})", flush=True)

    med = {v: {k: C.summary(r[k] for r in runs if r["variant"] == v) for k in ("wall_s", "loop_s")} for v in variants}
    base_wall, base_loop = med["off"]["wall_s"]["median"], med["off"]["loop_s"]["median"]
    result: dict[str, Any] = {"epochs": args.epochs, "repetitions": args.reps, "omp_num_threads": args.threads or None, "target_percent": TARGET, "runs": runs, "variants": {}}
    rows = [["variant", "wall (median)", "overhead", f"target <= {TARGET:.0f}%", "loop (median)", "loop overhead", "per checkpoint"]]
    for v in variants:
        wall, loop = med[v]["wall_s"]["median"], med[v]["loop_s"]["median"]
        over = 100 * (wall - base_wall) / base_wall
        loop_over = 100 * (loop - base_loop) / base_loop
        per_ckpt = (wall - base_wall) / args.epochs if v != "off" else 0.0
        result["variants"][v] = {
            "wall_s": med[v]["wall_s"], "loop_s": med[v]["loop_s"],
            "overhead_percent": over, "loop_overhead_percent": loop_over, "per_checkpoint_s": per_ckpt,
        }
        rows.append([
            v if v != "off" else "off (every: 0, baseline)", C.secs(wall), f"{over:+.1f}%",
            "-" if v == "off" else C.verdict(over, TARGET), C.secs(loop), f"{loop_over:+.1f}%",
            "-" if v == "off" else C.ms(per_ckpt),
        ])
    print()
    print(C.table(rows))
    sync_runs = [r for r in runs if r["variant"] == "sync"]
    in_run = C.summary(r["in_run_checkpoint_s"] for r in sync_runs)
    per = C.summary(r["in_run_checkpoint_median_s"] for r in sync_runs)
    share = 100 * in_run["median"] / base_wall
    result["sync_in_run_checkpoint_s"] = in_run
    result["sync_in_run_checkpoint_per_step_s"] = per
    result["sync_in_run_checkpoint_percent_of_off_wall"] = share
    print(f"\nsync, measured inside the runs (robust to epoch-time noise): {args.epochs} checkpoints took"
          f" {C.secs(in_run['median'])} in all ({C.ms(per['median'])} each, median) = {share:.1f}% of the"
          f" every: 0 run's wall time (target <= {TARGET:.0f}%: {C.verdict(share, TARGET)})")
    C.write_result("overhead", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
