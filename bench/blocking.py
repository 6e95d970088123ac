#!/usr/bin/env python
"""Blocking time per checkpoint: the real ``Checkpointer`` path vs plain ``torch.save``.

For each state size (a model of 1024x1024 Linear layers plus its Adam state, totalling about
that many MB) this builds a real Git + DVC repository holding the example project, sets the
variables ``dvc exp run`` sets for a stage (DVC_ROOT, DVC_EXP_NAME, DVC_EXP_BASELINE_REV,
DVC_STAGE), and times ``checkpointer.save(state, step, metrics)`` -- what
``CheckpointLive.next_step()`` calls after dvclive has logged -- from the call to its return:

* sync  (``checkpoint.async: false``): serialise, hash, write+fsync, cache link, commit, ref;
* async (``checkpoint.async: true``): the copy into reusable buffers; the rest runs in the
  background, and is waited for (untimed, reported as "background") before the next step, as
  if a training step longer than the background write had gone by;

against ``torch.save({"model": ..., "optimizer": ...}, path)`` of the same tensors, in the same
run, alternating (the order rotates every repetition). A second, durable baseline --
``torch.save`` into an open file, then flush + ``os.fsync`` -- shows how much of the sync ratio
is the price of durability (plain torch.save leaves its bytes in the page cache). ``sync`` is written before each timed
operation so no one pays for another's dirty pages. Medians exclude the first checkpoint of each
mode (it also snapshots the workspace and hashes the dependencies once per run; reported apart).

The times are broken down by the publishing phases (``expckpt.phases``; nothing is patched):
a subscriber stamps the moment each checkpoint reaches each phase. Sync: the time spent before
each phase since the previous one (before ``after-temp``: capture, dvclive files and the
streamed serialise + write + MD5 + fsync of the temp file; then cache link, rename, dvc.lock and
Git commit, workspace dvc.lock, ref, note; after the note: retention). Async: when the
background thread reached each phase, counted from the call. The file write itself is broken
down against its floors (torch.save + fsync, MD5 of the same bytes) by ``bench/gpu.py``.

    python bench/blocking.py                 # 12, 100 and 500 MB
    python bench/blocking.py --sizes 12      # quick
    python bench/blocking.py --threads 1     # torch.set_num_threads(1): see README (async copy)
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from expckpt import Checkpointer, TrainingState, phases  # noqa: E402

TARGET_SYNC = 1.5
TARGET_ASYNC = 0.25
WIDTH = 1024
DEFAULT_REPS = {12: 9, 100: 5, 500: 5}


# -- per-phase timings, from the phase hook (expckpt.phases), nothing patched -------------------
class Recorder:
    """Subscribed to ``expckpt.phases``: the time each checkpoint reaches each phase."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []
        self._unsubscribe = phases.subscribe(self._mark)

    def _mark(self, name: str, step: int) -> None:
        self.marks.append((name, time.perf_counter()))

    def take(self) -> list[tuple[str, float]]:
        marks, self.marks = self.marks, []
        return marks

    def close(self) -> None:
        self._unsubscribe()


REC = Recorder()

BREAKDOWN_ROWS = [
    ("after-temp", "capture, dvclive files, serialise + write + MD5 + fsync the temp file"),
    ("after-cache", "link into the DVC cache"),
    ("after-publish", "rename onto model.pt + fsync dir"),
    ("after-commit", "dvc.lock, Git blobs + tree + commit (dulwich)"),
    ("after-lock", "write workspace dvc.lock"),
    ("after-ref", "Git ref"),
    ("after-note", "session note"),
    ("return", "after the note: retention, messages, policy"),
]


def derive(marks: list[tuple[str, float]], start: float, end: float) -> dict[str, float]:
    """Time spent before each phase (since the previous one), and after the last until ``end``."""
    out: dict[str, float] = {}
    previous = start
    for name, at in [*marks, ("return", end)]:
        out[name] = out.get(name, 0.0) + at - previous
        previous = at
    out["total"] = end - start
    return out


# -- the state ------------------------------------------------------------------------------------
def build_state(megabytes: int) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    per_layer = (WIDTH * WIDTH + WIDTH) * 4 * 3  # weights + Adam exp_avg + exp_avg_sq
    layers = max(1, round(megabytes * 1_000_000 / per_layer))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, WIDTH)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, layers


def train_a_little(model: nn.Module) -> None:
    """Change the weights between checkpoints, as a training step would."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-4)


def checkpointer_for(
    repo: Path, baseline: str, exp: str, async_save: bool, config: dict[str, Any] | None = None
) -> Checkpointer:
    env = {
        **os.environ,
        "DVC_ROOT": str(repo),
        "DVC_EXP_NAME": exp,
        "DVC_EXP_BASELINE_REV": baseline,
        "DVC_STAGE": "train",
    }
    config = {"every": 1, "keep_last": 10, "keep_best": 1, "monitor": "acc", "mode": "max", "async": async_save, **(config or {})}
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        ck = Checkpointer.from_env("model.pt", config, env=env)
    finally:
        os.chdir(cwd)
    ck.echo = lambda line: None
    if ck.committer is None:
        raise SystemExit("bench: the Checkpointer did not see a `dvc exp run` context")
    return ck


def write_live_files(repo: Path, step: int, metrics: dict[str, float]) -> None:
    live = repo / "dvclive"
    (live / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    import json

    (live / "metrics.json").write_text(json.dumps({"step": step, **metrics}))
    for name, value in metrics.items():
        path = live / "plots" / "metrics" / f"{name}.tsv"
        if not path.exists():
            path.write_text(f"step\t{name}\n")
        with path.open("a") as handle:
            handle.write(f"{step}\t{value}\n")


def clean_cache(repo: Path) -> None:
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    for leftover in ("model.pt",):
        (repo / leftover).unlink(missing_ok=True)


def measure_size(megabytes: int, reps: int, repos: dict[str, Path], baseline_dir: Path, baselines: dict[str, str]) -> dict[str, Any]:
    model, optimizer, layers = build_state(megabytes)
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    tensor_bytes += sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    print(f"-- {megabytes} MB state: {layers} x Linear({WIDTH},{WIDTH}) + Adam = {tensor_bytes / 1e6:.1f} MB of tensors; {reps} repetitions")
    states = {mode: TrainingState(model=model, optimizer=optimizer) for mode in ("sync", "async")}
    ckpts = {
        mode: checkpointer_for(repos[mode], baselines[mode], f"{mode}-{megabytes}mb", mode == "async")
        for mode in ("sync", "async")
    }
    base_path = baseline_dir / "baseline.pt"
    times: dict[str, list[float]] = {"torch.save": [], "torch.save+fsync": [], "sync": [], "async": [], "async_background": []}
    breakdowns: list[dict[str, float]] = []
    async_parts: list[dict[str, float]] = []
    first: dict[str, float] = {}
    file_size = 0

    def do(kind: str, step: int, timed: bool) -> None:
        nonlocal file_size
        train_a_little(model)
        metrics = {"acc": 0.5 + 0.001 * step, "loss": 1.0 / (step + 1)}
        if kind in repos:
            write_live_files(repos[kind], step, metrics)
        base_path.unlink(missing_ok=True)
        gc.collect()
        os.sync()
        if kind == "torch.save":
            start = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, base_path)
            elapsed = time.perf_counter() - start
        elif kind == "torch.save+fsync":
            start = time.perf_counter()
            with open(base_path, "wb") as handle:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            elapsed = time.perf_counter() - start
        elif kind == "sync":
            REC.take()
            start = time.perf_counter()
            ckpts["sync"].save(states["sync"], step, metrics)
            end = time.perf_counter()
            elapsed = end - start
            if timed:
                breakdowns.append(derive(REC.take(), start, end))
            file_size = (repos["sync"] / "model.pt").stat().st_size
        else:
            REC.take()
            start = time.perf_counter()
            ckpts["async"].save(states["async"], step, metrics)
            elapsed = time.perf_counter() - start
            ckpts["async"].wait()
            if timed:
                times["async_background"].append(time.perf_counter() - start)
                # when the background thread reached each phase, counted from the call
                async_parts.append({name: at - start for name, at in REC.take()})
        if timed:
            times[kind].append(elapsed)
        else:
            first[kind] = elapsed

    order = ["torch.save", "sync", "async", "torch.save+fsync"]
    for kind in order:
        do(kind, 0, timed=False)
    for rep in range(1, reps + 1):
        rotated = order[rep % len(order) :] + order[: rep % len(order)]
        for kind in rotated:
            do(kind, rep, timed=True)
    for ck in ckpts.values():
        ck.close()

    med = {k: C.summary(v) for k, v in times.items()}
    base = med["torch.save"]["median"]
    parts = {key: C.summary(b.get(key, 0.0) for b in breakdowns)["median"] for key, _ in BREAKDOWN_ROWS}
    parts["total"] = med["sync"]["median"]
    result = {
        "size_mb": megabytes,
        "tensor_bytes": tensor_bytes,
        "checkpoint_file_bytes": file_size,
        "layers": layers,
        "repetitions": reps,
        "torch_threads": torch.get_num_threads(),
        "torch_save_s": med["torch.save"],
        "torch_save_fsync_s": med["torch.save+fsync"],
        "sync_ratio_to_durable_torch_save": med["sync"]["median"] / med["torch.save+fsync"]["median"],
        "sync_s": med["sync"],
        "async_s": med["async"],
        "async_submit_to_published_s": med["async_background"],
        "first_checkpoint_s": first,
        "sync_ratio": med["sync"]["median"] / base,
        "async_ratio": med["async"]["median"] / base,
        "sync_target": TARGET_SYNC,
        "async_target": TARGET_ASYNC,
        "sync_breakdown_median_s": parts,
        "async_phase_reached_median_s": {k: C.summary(p[k] for p in async_parts if k in p)["median"] for k in phases.PHASES},
        "sync_breakdown_samples": breakdowns,
    }
    for mode in ("sync", "async"):
        clean_cache(repos[mode])
    base_path.unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12,100,500", help="comma-separated state sizes in MB (default 12,100,500)")
    parser.add_argument("--reps", type=int, help="timed repetitions per size (default 9 / 5 / 5)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's own choice)")
    parser.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.replace(" ", ",").split(",") if s]

    C.header("blocking time per checkpoint (expckpt Checkpointer vs torch.save)")
    root = C.workdir("blocking", keep=args.keep)
    env = C.isolated_env(root / "home")
    C.apply_env(env)
    repos = {mode: C.make_project(root / mode, env) for mode in ("sync", "async")}
    baselines = {mode: C.head(repo, env) for mode, repo in repos.items()}
    baseline_dir = root / "plain"
    baseline_dir.mkdir()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"   torch intra-op threads: {torch.get_num_threads()}\n")

    results = []
    try:
        for size in sizes:
            results.append(measure_size(size, args.reps or DEFAULT_REPS.get(size, 5), repos, baseline_dir, baselines))
            r = results[-1]
            print(f"   torch.save {C.ms(r['torch_save_s']['median'])}, sync {C.ms(r['sync_s']['median'])} "
                  f"({r['sync_ratio']:.2f}x), async {C.ms(r['async_s']['median'])} ({r['async_ratio']:.2f}x)\n")
    finally:
        REC.close()

    rows = [["state", "file", "torch.save", "sync", "sync/torch.save", f"target <= {TARGET_SYNC}x",
             "async", "async/torch.save", f"target <= {TARGET_ASYNC}x", "async bg publish", "1st sync ckpt"]]
    for r in results:
        rows.append([
            f"{r['size_mb']} MB", f"{r['checkpoint_file_bytes'] / 1e6:.1f} MB",
            C.ms(r["torch_save_s"]["median"]), C.ms(r["sync_s"]["median"]), f"{r['sync_ratio']:.2f}x",
            C.verdict(r["sync_ratio"], TARGET_SYNC),
            C.ms(r["async_s"]["median"]), f"{r['async_ratio']:.2f}x", C.verdict(r["async_ratio"], TARGET_ASYNC),
            C.ms(r["async_submit_to_published_s"]["median"]), C.ms(r["first_checkpoint_s"].get("sync")),
            C.ms(r["torch_save_fsync_s"]["median"]), f"{r['sync_ratio_to_durable_torch_save']:.2f}x",
        ])
    print(C.table(rows))
    print("\nwhere the sync time goes (median per checkpoint):")
    rows = [["part", *[f"{r['size_mb']} MB" for r in results]]]
    for key, label in BREAKDOWN_ROWS:
        rows.append([label, *[f"{C.ms(r['sync_breakdown_median_s'][key])} ({100 * r['sync_breakdown_median_s'][key] / r['sync_s']['median']:.0f}%)" for r in results]])
    rows.append(["total (median of totals)", *[C.ms(r["sync_s"]["median"]) for r in results]])
    rows.append(["torch.save baseline", *[C.ms(r["torch_save_s"]["median"]) for r in results]])
    rows.append(["torch.save + fsync (durable baseline)", *[C.ms(r["torch_save_fsync_s"]["median"]) for r in results]])
    print(C.table(rows))
    print("(parts are medians of each part, so they need not add up exactly to the median total)")
    print("\nasync: when the background publish reached each phase, counted from the call (median):")
    rows = [["phase", *[f"{r['size_mb']} MB" for r in results]]]
    rows.append(["call returned (blocking)", *[C.ms(r["async_s"]["median"]) for r in results]])
    for key in phases.PHASES:
        rows.append([key, *[C.ms(r["async_phase_reached_median_s"].get(key)) for r in results]])
    print(C.table(rows))
    C.write_result("blocking" if not args.threads else f"blocking-threads{args.threads}", {"sizes": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
